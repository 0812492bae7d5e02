"""The Infini-attention layer: local causal attention inside a segment, gated with a read of the
compressive memory of all earlier segments.

Axis legend (every einsum uses these letters):
  B batch, T segment length (queries), S segment length (keys), N query heads, K key/value heads,
  G query heads per key/value head (N = K * G), H key dim, V value dim, D model dim.

Per segment (paper section 2):
  q, k, v      = x W_q, x W_k, x W_v                 shared by both paths, no extra projections
  A_dot        = softmax(RoPE(q) RoPE(k)ᵀ / √H) v    causal, inside the segment only
  A_mem        = retrieve(M_{s-1}, q)                no position encoding on the memory path
  M_s          = update(M_{s-1}, k, v)               after the read, so a token never reads itself
  A            = sigmoid(β) A_mem + (1 - sigmoid(β)) A_dot, one β per query head, float32
  y            = A W_o
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from infini_jax import memory as memlib
from infini_jax import sharding as sh

MEMORIES = ("infini", "local")


def param(rngs: nnx.Rngs, shape, names, in_axis, out_axis, dtype) -> nnx.Param:
  """A fan-in scaled weight annotated with logical axis names (sharded later, by the rules)."""
  init = jax.nn.initializers.variance_scaling(
      1.0, "fan_in", "truncated_normal", in_axis=in_axis, out_axis=out_axis)
  return nnx.Param(init(rngs.params(), shape, dtype), sharding=names, eager_sharding=False)


def rope(x: jax.Array, theta: float) -> jax.Array:
  """Rotary position encoding of x [B, T, N, H] at positions 0..T-1 of the segment.

  Halves convention (the first H/2 dims pair with the last H/2), as Llama checkpoints expect.
  Positions restart at every segment: RoPE is relative, so only distances inside it matter.
  """
  _, T, _, H = x.shape
  freq = theta ** (-jnp.arange(0, H // 2, dtype=jnp.float32) * 2.0 / H)  # [H/2]
  angle = jnp.arange(T, dtype=jnp.float32)[:, None] * freq[None, :]  # [T, H/2]
  sin, cos = jnp.sin(angle)[None, :, None, :], jnp.cos(angle)[None, :, None, :]
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)


def local_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None) -> jax.Array:
  """Causal softmax attention inside one segment, with grouped-query heads.

  q [B, T, N, H], k [B, S, K, H], v [B, S, K, V], mask [B, S] (False on padded keys)
  -> [B, T, N, V] in float32. Logits and softmax run in float32.
  """
  B, T, N, H = q.shape
  K = k.shape[2]
  q = q.reshape(B, T, K, N // K, H)  # [B, T, K, G, H]
  logits = jnp.einsum("BTKGH,BSKH->BKGTS", q, k, preferred_element_type=jnp.float32)
  logits = logits * (H ** -0.5)
  visible = jnp.tril(jnp.ones((T, T), bool))[None, None, None]  # [1, 1, 1, T, S]
  if mask is not None:
    visible = visible & mask[:, None, None, None, :]
  # A finite floor instead of -inf: a fully padded row gives a finite (ignored) output, not NaN.
  logits = jnp.where(visible, logits, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(logits, axis=-1)  # [B, K, G, T, S]
  out = jnp.einsum("BKGTS,BSKV->BTKGV", probs.astype(v.dtype), v,
                   preferred_element_type=jnp.float32)
  return out.reshape(B, T, N, v.shape[-1])


class InfiniAttention(nnx.Module):
  """Multi-head / grouped-query attention with a compressive memory per key/value head.

  memory="infini" is the paper's layer (rule "linear" or "delta"); memory="local" drops the memory
  path (segment-local attention only, no state), the paper's weakest baseline.
  """

  def __init__(self, d_model: int, num_heads: int, num_kv_heads: int, head_dim: int, *,
               memory: str = "infini", rule: str = "linear", gate_init: float = 0.0,
               rope_theta: float = 10_000.0, dtype=jnp.float32, param_dtype=jnp.float32,
               rngs: nnx.Rngs):
    if memory not in MEMORIES:
      raise ValueError(f"unknown memory {memory!r}; use one of {MEMORIES}")
    if rule not in memlib.RULES:
      raise ValueError(f"unknown memory update rule {rule!r}; use one of {memlib.RULES}")
    if num_heads % num_kv_heads:
      raise ValueError(f"num_heads={num_heads} must be a multiple of num_kv_heads={num_kv_heads}")
    if head_dim % 2:
      raise ValueError(f"head_dim={head_dim} must be even for RoPE")
    self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
    self.memory, self.rule, self.rope_theta, self.dtype = memory, rule, rope_theta, dtype
    D, N, K, H = d_model, num_heads, num_kv_heads, head_dim
    self.wq = param(rngs, (D, N, H), (sh.EMBED, sh.HEADS, sh.HEAD_DIM), 0, (1, 2), param_dtype)
    self.wk = param(rngs, (D, K, H), (sh.EMBED, sh.KV_HEADS, sh.HEAD_DIM), 0, (1, 2), param_dtype)
    self.wv = param(rngs, (D, K, H), (sh.EMBED, sh.KV_HEADS, sh.HEAD_DIM), 0, (1, 2), param_dtype)
    self.wo = param(rngs, (N, H, D), (sh.HEADS, sh.HEAD_DIM, sh.EMBED), (0, 1), 2, param_dtype)
    if memory == "infini":
      # The gate stays float32 whatever param_dtype is: its sigmoid must be able to move by
      # small steps near 0 and 1.
      self.gate = nnx.Param(jnp.full((N,), gate_init, jnp.float32), sharding=(sh.HEADS,),
                            eager_sharding=False)

  def init_state(self, batch: int) -> memlib.CompressiveMemory | None:
    if self.memory == "local":
      return None
    return memlib.init_memory(batch, self.num_kv_heads, self.head_dim, self.head_dim)

  def gate_value(self) -> jax.Array:
    """sigmoid(β) per query head: 1 reads only the memory, 0 only the local context."""
    return jax.nn.sigmoid(self.gate[...])

  def __call__(self, x: jax.Array, state, mask: jax.Array | None = None):
    """x [B, T, D] one segment, state the layer's memory, mask [B, T] -> (y [B, T, D], state)."""
    x = x.astype(self.dtype)
    q = jnp.einsum("BTD,DNH->BTNH", x, self.wq[...].astype(self.dtype))
    k = jnp.einsum("BTD,DKH->BTKH", x, self.wk[...].astype(self.dtype))
    v = jnp.einsum("BTD,DKV->BTKV", x, self.wv[...].astype(self.dtype))
    out = local_attention(rope(q, self.rope_theta), rope(k, self.rope_theta), v, mask)
    if self.memory == "infini":
      a_mem = memlib.retrieve(state, q)  # [B, T, N, V] float32
      state = memlib.update(state, k, v, self.rule, mask)
      g = self.gate_value()[None, None, :, None]  # [1, 1, N, 1]
      out = g * a_mem + (1.0 - g) * out  # [B, T, N, V] float32
    y = jnp.einsum("BTNV,NVD->BTD", out.astype(self.dtype), self.wo[...].astype(self.dtype))
    return y, state
