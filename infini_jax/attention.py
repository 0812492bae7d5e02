"""The attention layer: projections, RoPE on the local path, and a segment memory.

Axis legend (every einsum uses these letters):
  B batch, T segment length (queries), S segment length (keys), C tokens per decoding call,
  N query heads, K key/value heads, G query heads per key/value head (N = K * G), H key dim,
  V value dim, D model dim.

Per segment: q, k, v = x W_q, x W_k, x W_v; the segment memory (infini_jax/memories: the paper's
Infini-attention, its options and the baselines) turns them and its state into A [B, T, N, V]
and the next state; y = A W_o. The layer knows nothing of any memory's options: it gives the
memory its local path (`local`: RoPE at 0..T-1, causal attention inside the segment), `rope_at`
and `project_kv`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from infini_jax import dense
from infini_jax import rope as ropelib
from infini_jax import sharding as sh
from infini_jax import local_attention as local_impls


def param(rngs: nnx.Rngs, shape, names, in_axis, out_axis, dtype) -> nnx.Param:
  """A fan-in scaled weight annotated with logical axis names (sharded later, by the rules)."""
  init = jax.nn.initializers.variance_scaling(
      1.0, "fan_in", "truncated_normal", in_axis=in_axis, out_axis=out_axis)
  return nnx.Param(init(rngs.params(), shape, dtype), sharding=names, eager_sharding=False)


def rope(x: jax.Array, theta: float, scaling: ropelib.Scaling | None = None) -> jax.Array:
  """Rotary position encoding of x [B, T, N, H] at positions 0..T-1 of the segment.

  Halves convention (the first H/2 dims pair with the last H/2), as Llama checkpoints expect.
  Positions restart at every segment: RoPE is relative, so only distances inside it matter.
  """
  return rope_at(x, jnp.arange(x.shape[1]), theta, scaling)


def local_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None,
                    impl: str = "blocked") -> jax.Array:
  """Causal softmax attention inside one segment, with grouped-query heads.

  q [B, T, N, H], k [B, S, K, H], v [B, S, K, V], mask [B, S] (False on padded keys)
  -> [B, T, N, V] in float32. Logits and softmax run in float32. A query whose visible keys are
  all padded gets a finite output (a mean of values), which the caller ignores.
  `impl` (model.attention_impl, infini_jax/local_attention.py): "blocked", query blocks over their
  key prefix with a hand-written gradient (fastest on CPU), or "xla", jax.nn.dot_product_attention
  (cuDNN flash attention on GPU in 16 bits, XLA's path elsewhere).
  """
  return local_impls.IMPLEMENTATIONS[impl](q, k, v, None if mask is None else mask.astype(bool))


class Attention(nnx.Module):
  """Multi-head / grouped-query attention around a segment memory (`memory`, which owns its
  parameters and state)."""

  def __init__(self, d_model: int, num_heads: int, num_kv_heads: int, head_dim: int, memory, *,
               rope_theta: float = 10_000.0, rope_scaling: ropelib.Scaling | None = None,
               dtype=jnp.float32, param_dtype=jnp.float32, attention_impl: str = "blocked",
               rngs: nnx.Rngs):
    if num_heads % num_kv_heads:
      raise ValueError(f"num_heads={num_heads} must be a multiple of num_kv_heads={num_kv_heads}")
    if head_dim % 2:
      raise ValueError(f"head_dim={head_dim} must be even for RoPE")
    if attention_impl not in local_impls.IMPLEMENTATIONS:
      raise ValueError(f"unknown attention_impl {attention_impl!r}; use one of "
                       f"{tuple(local_impls.IMPLEMENTATIONS)}")
    self.attention_impl, self.memory = attention_impl, memory
    self.rope_theta, self.rope_scaling, self.dtype = rope_theta, rope_scaling, dtype
    D, N, K, H = d_model, num_heads, num_kv_heads, head_dim
    self.wq = param(rngs, (D, N, H), (sh.EMBED, sh.HEADS, sh.HEAD_DIM), 0, (1, 2), param_dtype)
    self.wk = param(rngs, (D, K, H), (sh.EMBED, sh.KV_HEADS, sh.HEAD_DIM), 0, (1, 2), param_dtype)
    self.wv = param(rngs, (D, K, H), (sh.EMBED, sh.KV_HEADS, sh.HEAD_DIM), 0, (1, 2), param_dtype)
    self.wo = param(rngs, (N, H, D), (sh.HEADS, sh.HEAD_DIM, sh.EMBED), (0, 1), 2, param_dtype)

  def init_state(self, batch: int):
    return self.memory.init_state(batch)

  # What segment memories build on.

  def project(self, x: jax.Array):
    """x [B, T, D] -> q [B, T, N, H], k [B, T, K, H], v [B, T, K, V]."""
    q = dense.token_einsum("BTD,DNH->BTNH", x, dense.weight(self.wq, self.dtype))
    return (q, *self.project_kv(x))

  def project_kv(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """x [B, T, D] -> k [B, T, K, H], v [B, T, K, V]."""
    k = dense.token_einsum("BTD,DKH->BTKH", x, dense.weight(self.wk, self.dtype))
    v = dense.token_einsum("BTD,DKV->BTKV", x, dense.weight(self.wv, self.dtype))
    return k, v

  def local(self, q: jax.Array, k: jax.Array, v: jax.Array, mask) -> jax.Array:
    """Causal attention inside the segment, RoPE at positions 0..T-1: [B, T, N, V] float32."""
    theta, scaling = self.rope_theta, self.rope_scaling
    return local_attention(rope(q, theta, scaling), rope(k, theta, scaling), v, mask,
                           self.attention_impl)

  def rope_at(self, x: jax.Array, positions: jax.Array) -> jax.Array:
    return rope_at(x, positions, self.rope_theta, self.rope_scaling)

  def output(self, out: jax.Array) -> jax.Array:
    """A [B, T, N, V] -> y [B, T, D]."""
    return dense.token_einsum("BTNV,NVD->BTD", out.astype(self.dtype),
                              dense.weight(self.wo, self.dtype))

  def __call__(self, x: jax.Array, state, mask: jax.Array | None = None):
    """x [B, T, D] one segment, state the memory's, mask [B, T] -> (y [B, T, D], state)."""
    x = x.astype(self.dtype)
    q, k, v = self.project(x)
    out, state = self.memory(self, x, q, k, v, state, mask)  # [B, T, N, V] float32
    return self.output(out), state

  # Decoding: one segment's tokens a few at a time, through the memory's cache of the segment.

  def init_cache(self, batch: int, segment_len: int):
    return self.memory.init_cache(batch, segment_len, self.dtype)

  def extend(self, x: jax.Array, state, cache, pos: jax.Array):
    """x [B, C, D], the next C tokens of the current segment at its positions pos..pos+C-1.

    Computes what `__call__` computes for these tokens when it runs the whole segment, reading
    the memory `state` of the completed segments, which is not updated here (see `flush`). Slots
    at or past the segment's end are dropped, so a caller may pad x. -> (y [B, C, D], cache).
    """
    x = x.astype(self.dtype)
    q, k, v = self.project(x)
    cache = cache.write(x, k, v, pos)
    out = self.memory.extend(self, q, state, cache, pos + jnp.arange(x.shape[1]))
    return self.output(out), cache

  def flush(self, state, cache):
    """The memory's state after the complete segment held in `cache` (every slot written)."""
    return self.memory.flush(self, state, cache)


def rope_at(x: jax.Array, positions: jax.Array, theta: float,
            scaling: ropelib.Scaling | None = None) -> jax.Array:
  """`rope` of x [B, C, N, H] at the given positions [C] instead of 0..C-1."""
  freq = ropelib.frequencies(x.shape[-1], theta, scaling)  # [H/2]
  angle = positions.astype(jnp.float32)[:, None] * freq[None, :]  # [C, H/2]
  sin, cos = jnp.sin(angle)[None, :, None, :], jnp.cos(angle)[None, :, None, :]
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)
