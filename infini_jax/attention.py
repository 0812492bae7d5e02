"""The attention layer: projections, RoPE on the local path, and a segment memory.

Axis legend (every einsum uses these letters):
  B batch, T segment length (queries), S segment length (keys), N query heads, K key/value heads,
  G query heads per key/value head (N = K * G), H key dim, V value dim, D model dim.

Per segment (paper section 2), for the default memory, Infini-attention:
  q, k, v      = x W_q, x W_k, x W_v                 shared by both paths, no extra projections
  A_dot        = softmax(RoPE(q) RoPE(k)ᵀ / √H) v    causal, inside the segment only
  A_mem        = retrieve(M_{s-1}, q)                no position encoding on the memory path
  M_s          = update(M_{s-1}, k, v)               after the read, so a token never reads itself
  A            = sigmoid(β) A_mem + (1 - sigmoid(β)) A_dot, one β per query head, float32
  y            = A W_o
The memory step is delegated to a segment memory (infini_jax/memories): the paper's baselines
(local, XL, Memorizing, Compressive) plug into the same layer.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from infini_jax import dense
from infini_jax import memories
from infini_jax import memory as memlib
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


class InfiniAttention(nnx.Module):
  """Multi-head / grouped-query attention whose memory step is a segment memory.

  `memory` is "infini" (the paper's layer, with `rule` "linear" or "delta"; "deltanet" is an
  option beyond the paper, see memory.py), "local" (attention inside the segment only, no
  state), or any segment memory object from infini_jax.memories (model.py builds those from the
  ModelConfig). Gated memories get one β per query head.
  """

  def __init__(self, d_model: int, num_heads: int, num_kv_heads: int, head_dim: int, *,
               memory="infini", rule: str = "linear", gate_init: float = 0.0,
               rope_theta: float = 10_000.0, dtype=jnp.float32, param_dtype=jnp.float32,
               rope_scaling: ropelib.Scaling | None = None, attention_impl: str = "blocked",
               rngs: nnx.Rngs):
    if num_heads % num_kv_heads:
      raise ValueError(f"num_heads={num_heads} must be a multiple of num_kv_heads={num_kv_heads}")
    if head_dim % 2:
      raise ValueError(f"head_dim={head_dim} must be even for RoPE")
    if attention_impl not in local_impls.IMPLEMENTATIONS:
      raise ValueError(f"unknown attention_impl {attention_impl!r}; use one of "
                       f"{tuple(local_impls.IMPLEMENTATIONS)}")
    self.attention_impl = attention_impl
    if isinstance(memory, str):
      if memory not in ("infini", "local"):
        raise ValueError(f"unknown memory {memory!r}: a name is 'infini' or 'local'; build the "
                         "others with infini_jax.memories.for_layer(model_config, layer_index)")
      if rule not in memlib.RULES:
        raise ValueError(f"unknown memory update rule {rule!r}; use one of {memlib.RULES}")
      memory = (memories.Infini(num_kv_heads, head_dim, rule) if memory == "infini"
                else memories.Local())
    self.segment_memory = memory
    self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
    self.rope_theta, self.rope_scaling, self.dtype = rope_theta, rope_scaling, dtype
    D, N, K, H = d_model, num_heads, num_kv_heads, head_dim
    self.wq = param(rngs, (D, N, H), (sh.EMBED, sh.HEADS, sh.HEAD_DIM), 0, (1, 2), param_dtype)
    self.wk = param(rngs, (D, K, H), (sh.EMBED, sh.KV_HEADS, sh.HEAD_DIM), 0, (1, 2), param_dtype)
    self.wv = param(rngs, (D, K, H), (sh.EMBED, sh.KV_HEADS, sh.HEAD_DIM), 0, (1, 2), param_dtype)
    self.wo = param(rngs, (N, H, D), (sh.HEADS, sh.HEAD_DIM, sh.EMBED), (0, 1), 2, param_dtype)
    if memory.gated:
      # The gate stays float32 whatever param_dtype is: its sigmoid must be able to move by
      # small steps near 0 and 1.
      self.gate = nnx.Param(jnp.full((N,), gate_init, jnp.float32), sharding=(sh.HEADS,),
                            eager_sharding=False)
    if getattr(memory, "query_gated", False):
      # model.query_gate: the gate logit's weights on the query, float32 like the gate. Zero at
      # init: the gate starts as the paper's, one value per head.
      self.gate_w = nnx.Param(jnp.zeros((N, H), jnp.float32), sharding=(sh.HEADS, sh.HEAD_DIM),
                              eager_sharding=False)
    if getattr(memory, "scaled", False):
      # log of the scale on q and k before σ, per key/value head, float32 like the gate.
      self.memory_scale = nnx.Param(jnp.zeros((K,), jnp.float32), sharding=(sh.KV_HEADS,),
                                    eager_sharding=False)
    if getattr(memory, "write_gated", False):
      # β_t = sigmoid(k_t · w + b) per key/value head, float32 like the gate. Zero at init: every
      # token writes with 1/2, which for linear and delta scales M and z alike and so reads
      # exactly as the paper's memory.
      self.write_gate_w = nnx.Param(jnp.zeros((K, H), jnp.float32),
                                    sharding=(sh.KV_HEADS, sh.HEAD_DIM), eager_sharding=False)
      self.write_gate_b = nnx.Param(jnp.zeros((K,), jnp.float32), sharding=(sh.KV_HEADS,),
                                    eager_sharding=False)
    if getattr(memory, "decayed", False):
      # γ = sigmoid(a) per key/value head, float32 like the gate. The heads start at half-lives
      # spread from 1 to about 20 segments (γ from 0.5 to 0.97): some summarise the last few
      # segments, some much of the stream, and training moves each where it pays.
      self.memory_decay = nnx.Param(jnp.linspace(0.0, jnp.log(31.0), K, dtype=jnp.float32),
                                    sharding=(sh.KV_HEADS,), eager_sharding=False)

  def init_state(self, batch: int):
    return self.segment_memory.init_state(batch)

  def memory_qk(self, q: jax.Array | None, k: jax.Array | None):
    """The q [B, T, N, H] and k [B, T, K, H] that the memory reads and writes with (None: None).

    With model.memory_scale, both are multiplied by exp(s) (s learned per key/value head, 0 at
    init) before σ. σ = ELU + 1 is positive, so every stored key overlaps every query: a growing
    scale drives the features of opposite signs towards 0, so a retrieval can stay sharp while
    unrelated tokens pile up in M and z over a long stream. Without it, q and k as they are.
    """
    if not hasattr(self, "memory_scale"):
      return q, k
    s = jnp.exp(self.memory_scale[...])  # [K]
    sq = jnp.repeat(s, self.num_heads // self.num_kv_heads)  # [N]: head n reads kv head n // G
    scale = lambda x, s: None if x is None else x.astype(jnp.float32) * s[:, None]  # noqa: E731
    return scale(q, sq), scale(k, s)

  def write_strength(self, k: jax.Array) -> jax.Array | None:
    """Each token's write strength [B, T, K] from its key k [B, T, K, H], None without
    model.write_gate. From k, not x, so that decoding's cache holds all a write needs."""
    if not hasattr(self, "write_gate_w"):
      return None
    logit = jnp.einsum("BTKH,KH->BTK", k.astype(jnp.float32), self.write_gate_w[...])
    return jax.nn.sigmoid(logit + self.write_gate_b[...])

  def decay(self) -> jax.Array | None:
    """γ [K] in (0, 1), how much of the memory each segment keeps (model.memory_decay); None
    without it (the paper's memory keeps everything)."""
    if not hasattr(self, "memory_decay"):
      return None
    return jax.nn.sigmoid(self.memory_decay[...])

  def gate_value(self) -> jax.Array:
    """sigmoid(β) per query head: 1 reads only the memory, 0 only the local context (with
    model.memory_add, 1 adds the whole read to the local output). With model.query_gate, the
    gate of a query q = 0."""
    return jax.nn.sigmoid(self.gate[...])

  def mix(self, a_mem: jax.Array, local: jax.Array, q: jax.Array) -> jax.Array:
    """The paper's eq. 6: g·A_mem + (1 - g)·A_dot, g = sigmoid(β) per head; with
    model.query_gate g = sigmoid(β + q·w) per token and head, q [B, T, N, H] before RoPE.
    With model.memory_add g·A_mem + A_dot: the read is an extra term and the local output keeps
    its whole weight, where the paper's mix gives up (1 - g) of it, also in the first segment
    whose memory is empty. a_mem, local [B, T, N, V] -> [B, T, N, V] float32."""
    logit = self.gate[...][None, None, :]  # [1, 1, N]
    if hasattr(self, "gate_w"):
      logit = logit + jnp.einsum("BTNH,NH->BTN", q.astype(jnp.float32), self.gate_w[...])
    g = jax.nn.sigmoid(logit)[..., None]  # [B or 1, T or 1, N, 1]
    if getattr(self.segment_memory, "additive", False):
      return g * a_mem + local
    return g * a_mem + (1.0 - g) * local

  # The pieces segment memories build on.

  def project_kv(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """x [B, T, D] -> k [B, T, K, H], v [B, T, K, V]."""
    k = dense.token_einsum("BTD,DKH->BTKH", x, self.wk[...].astype(self.dtype))
    v = dense.token_einsum("BTD,DKV->BTKV", x, self.wv[...].astype(self.dtype))
    return k, v

  def local(self, q: jax.Array, k: jax.Array, v: jax.Array, mask) -> jax.Array:
    """Causal attention inside the segment, RoPE at positions 0..T-1: [B, T, N, V] float32."""
    theta, scaling = self.rope_theta, self.rope_scaling
    return local_attention(rope(q, theta, scaling), rope(k, theta, scaling), v, mask,
                           self.attention_impl)

  def rope_at(self, x: jax.Array, positions: jax.Array) -> jax.Array:
    return rope_at(x, positions, self.rope_theta, self.rope_scaling)

  def __call__(self, x: jax.Array, state, mask: jax.Array | None = None):
    """x [B, T, D] one segment, state the layer's memory, mask [B, T] -> (y [B, T, D], state)."""
    x = x.astype(self.dtype)
    q = dense.token_einsum("BTD,DNH->BTNH", x, self.wq[...].astype(self.dtype))
    k, v = self.project_kv(x)
    out, state = self.segment_memory(self, x, q, k, v, state, mask)  # [B, T, N, V] float32
    y = dense.token_einsum("BTNV,NVD->BTD", out.astype(self.dtype), self.wo[...].astype(self.dtype))
    return y, state

  # --- Decoding: one segment's tokens a few at a time, through a key/value cache. ---

  def init_cache(self, batch: int, segment_len: int) -> KVCache:
    """An empty cache for one segment of `segment_len` tokens."""
    K, H = self.num_kv_heads, self.head_dim
    return KVCache(k=jnp.zeros((batch, segment_len, K, H), self.dtype),
                   v=jnp.zeros((batch, segment_len, K, H), self.dtype))

  def extend(self, x: jax.Array, state, cache: KVCache, pos: jax.Array):
    """x [B, C, D], the next C tokens of the current segment at its positions pos..pos+C-1.

    Computes what `__call__` computes for these tokens when it runs the whole segment: local
    attention over the segment's earlier tokens (the cache) and themselves, and a read of the
    memory `state` of the completed segments, which is not updated here (see `flush`). Slots at
    or past the segment's end are dropped, so a caller may pad x. -> (y [B, C, D], cache).
    """
    self._check_decodable()
    x = x.astype(self.dtype)
    q = dense.token_einsum("BTD,DNH->BTNH", x, self.wq[...].astype(self.dtype))
    k, v = self.project_kv(x)
    cache = KVCache(k=write_cache(cache.k, k, pos), v=write_cache(cache.v, v, pos))
    q_pos = pos + jnp.arange(x.shape[1])  # [C] positions inside the segment
    # The cache keeps k without RoPE (the memory write needs them so); RoPE of the whole cache
    # is `rope` at positions 0..T-1, exactly the keys the segment scan attends to.
    keys = rope(cache.k, self.rope_theta, self.rope_scaling)
    out = cached_attention(self.rope_at(q, q_pos), keys, cache.v, q_pos)
    if isinstance(self.segment_memory, memories.Infini):
      a_mem = memlib.retrieve(state, self.memory_qk(q, None)[0],
                              self.segment_memory.rule)  # [B, C, N, V]
      out = self.mix(a_mem, out, q)
    y = dense.token_einsum("BTNV,NVD->BTD", out.astype(self.dtype), self.wo[...].astype(self.dtype))
    return y, cache

  def flush(self, state, cache: KVCache):
    """The memory after the complete segment held in `cache` (every slot written): M_s, z_s."""
    self._check_decodable()
    if isinstance(self.segment_memory, memories.Local):
      return state
    return memlib.update(state, self.memory_qk(None, cache.k)[1], cache.v,
                         self.segment_memory.rule, strength=self.write_strength(cache.k),
                         decay=self.decay())

  def _check_decodable(self):
    if (not isinstance(self.segment_memory, (memories.Infini, memories.Local))
        or getattr(self.segment_memory, "xl", None) is not None):
      raise ValueError(f"key/value-cache decoding supports the infini (without model.xl_cache), "
                       f"local and full memories, "
                       f"not {type(self.segment_memory).__name__}; evaluate perplexity instead")


class KVCache(NamedTuple):
  """Keys k [B, T, K, H] (without RoPE) and values v [B, T, K, V] of the current segment."""

  k: jax.Array
  v: jax.Array


def write_cache(buf: jax.Array, new: jax.Array, pos: jax.Array) -> jax.Array:
  """buf [B, T, ...] with new [B, C, ...] written at slots pos..pos+C-1; slots >= T dropped.

  A roll and a select rather than `dynamic_update_slice`, which would shift the write back when
  pos + C > T (a padded chunk) and overwrite earlier tokens.
  """
  T, C = buf.shape[1], new.shape[1]
  new = jnp.pad(new, [(0, 0), (0, T - C)] + [(0, 0)] * (new.ndim - 2))  # [B, T, ...]
  new = jnp.roll(new, pos, axis=1)
  slot = jnp.arange(T)
  written = (slot >= pos) & (slot < pos + C)  # [T]
  return jnp.where(written.reshape((1, T) + (1,) * (buf.ndim - 2)), new, buf)


def rope_at(x: jax.Array, positions: jax.Array, theta: float,
            scaling: ropelib.Scaling | None = None) -> jax.Array:
  """`rope` of x [B, C, N, H] at the given positions [C] instead of 0..C-1."""
  freq = ropelib.frequencies(x.shape[-1], theta, scaling)  # [H/2]
  angle = positions.astype(jnp.float32)[:, None] * freq[None, :]  # [C, H/2]
  sin, cos = jnp.sin(angle)[None, :, None, :], jnp.cos(angle)[None, :, None, :]
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)


def cached_attention(q: jax.Array, k: jax.Array, v: jax.Array, q_pos: jax.Array) -> jax.Array:
  """`local_attention` for queries at positions q_pos [C] of the segment, over its cache.

  q [B, C, N, H], k [B, S, K, H], v [B, S, K, V] (S = segment length) -> [B, C, N, V] float32.
  Key slot s is visible to the query at position p iff s <= p: causal, and slots not written
  yet in this segment (stale or padding) are never read.
  """
  B, C, N, H = q.shape
  S, K = k.shape[1], k.shape[2]
  q = q.reshape(B, C, K, N // K, H)  # [B, T, K, G, H] with T = C queries
  logits = jnp.einsum("BTKGH,BSKH->BKGTS", q, k, preferred_element_type=jnp.float32)
  logits = logits * (H ** -0.5)
  visible = (jnp.arange(S)[None, :] <= q_pos[:, None])[None, None, None]  # [1, 1, 1, T, S]
  logits = jnp.where(visible, logits, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(logits, axis=-1)  # [B, K, G, T, S]
  out = jnp.einsum("BKGTS,BSKV->BTKGV", probs.astype(v.dtype), v,
                   preferred_element_type=jnp.float32)
  return out.reshape(B, C, N, v.shape[-1])
