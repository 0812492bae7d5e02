"""Compressive Transformer (Rae et al. 2020): Transformer-XL memory plus a compressed memory.

Like the original, the memories hold each layer's input hidden states (not keys and values), and
keys and values are computed from them with the layer's current projections. The previous
segment (T states) is the fine memory; when a segment leaves it, its states are compressed at rate
r by a (padding-aware) mean over r consecutive states and appended to a first-in-first-out
compressed memory of c slots. Attention runs over [compressed, fine, segment] with RoPE positions
in that order. No gradient flows into the memories. Footprint per layer (paper Table 1):
d_model · (c + N) numbers.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from infini_jax.memories.common import KVCache, attend, causal_visible, fifo, segment_visible
from infini_jax.sections import need


@dataclasses.dataclass(frozen=True)
class CompressiveConfig:
  """model.compressive: the compressed slots (memory=compressive needs memory_size >= 1) and the
  rate, fine tokens per compressed slot (it must divide model.shape.segment_len)."""

  memory_size: int = 0
  compress_rate: int = 4

  def __post_init__(self):
    need(self.memory_size >= 0, "compressive.memory_size", self.memory_size, "must be >= 0")
    need(self.compress_rate >= 1, "compressive.compress_rate", self.compress_rate,
         "must be >= 1")


class CompressiveCache(NamedTuple):
  fine: jax.Array  # [B, T, D] the previous segment's layer inputs
  fine_valid: jax.Array  # [B, T]
  coarse: jax.Array  # [B, c, D] compressed older segments, oldest first
  coarse_valid: jax.Array  # [B, c]


class Compressive(nnx.Module):

  def __init__(self, segment_len: int, d_model: int, slots: int, rate: int, num_kv_heads: int,
               head_dim: int, dtype):
    self.T, self.D, self.c, self.r = segment_len, d_model, slots, rate
    self.K, self.H, self.dtype = num_kv_heads, head_dim, jnp.dtype(dtype)

  def init_state(self, batch: int) -> CompressiveCache:
    dt = self.dtype
    return CompressiveCache(
        fine=jnp.zeros((batch, self.T, self.D), dt), fine_valid=jnp.zeros((batch, self.T), bool),
        coarse=jnp.zeros((batch, self.c, self.D), dt), coarse_valid=jnp.zeros((batch, self.c), bool))

  def footprint(self) -> int:
    return self.D * (self.c + self.T)

  def flops(self, N: int, T: int) -> tuple[float, float]:
    del N  # keys and values of its c + T stored states, per token of the segment
    return self.c + 2 * T, 2 * self.D * 2 * self.K * self.H * (self.c + T) / T

  def compress(self, fine: jax.Array, valid: jax.Array) -> tuple[jax.Array, jax.Array]:
    """[B, T, D] -> [B, T/r, D]: the mean of the real states in each group of r."""
    B, T, D = fine.shape
    w = valid.reshape(B, T // self.r, self.r, 1).astype(jnp.float32)
    x = fine.reshape(B, T // self.r, self.r, D).astype(jnp.float32)
    n = w.sum(2)  # [B, T/r, 1]
    return (x * w).sum(2) / jnp.maximum(n, 1.0), n[..., 0] > 0

  def _history(self, layer, state: CompressiveCache, dtype):
    """Keys and values of [compressed, fine] [B, c + T, K, H] and their validity [B, c + T]."""
    history = jax.lax.stop_gradient(jnp.concatenate([state.coarse, state.fine], axis=1))
    hk, hv = layer.project_kv(history.astype(dtype))
    return hk, hv, jnp.concatenate([state.coarse_valid, state.fine_valid], axis=1)

  def _next(self, state: CompressiveCache, x, mask) -> CompressiveCache:
    pooled, pooled_valid = self.compress(state.fine, state.fine_valid)
    return CompressiveCache(
        fine=jax.lax.stop_gradient(x).astype(self.dtype), fine_valid=mask,
        coarse=fifo(state.coarse, pooled.astype(self.dtype)),
        coarse_valid=fifo(state.coarse_valid, pooled_valid))

  def __call__(self, layer, x, q, k, v, state: CompressiveCache, mask):
    B, T = q.shape[:2]
    c = self.c
    mask = jnp.ones((B, T), bool) if mask is None else mask
    hk, hv, valid = self._history(layer, state, x.dtype)
    keys, values = jnp.concatenate([hk, k], axis=1), jnp.concatenate([hv, v], axis=1)
    k_pos, q_pos = jnp.arange(c + 2 * T), c + T + jnp.arange(T)
    visible = causal_visible(q_pos, k_pos, jnp.concatenate([valid, mask], axis=1))
    out = attend(layer.rope_at(q, q_pos), layer.rope_at(keys, k_pos), values, visible)
    return out, self._next(state, x, mask)

  def init_cache(self, batch: int, T: int, dtype) -> KVCache:
    return KVCache.empty(batch, T, self.K, self.H, dtype, inputs_dim=self.D)

  def extend(self, layer, q, state: CompressiveCache, cache: KVCache, q_pos):
    B, C = q.shape[:2]
    T, c = self.T, self.c
    hk, hv, valid = self._history(layer, state, cache.k.dtype)
    keys = jnp.concatenate([hk, cache.k], axis=1)
    values = jnp.concatenate([hv, cache.v], axis=1)
    visible = jnp.concatenate([jnp.broadcast_to(valid[:, None, :], (B, C, c + T)),
                               jnp.broadcast_to(segment_visible(q_pos, T), (B, C, T))], axis=2)
    return attend(layer.rope_at(q, c + T + q_pos), layer.rope_at(keys, jnp.arange(c + 2 * T)),
                  values, visible)

  def flush(self, layer, state: CompressiveCache, cache: KVCache) -> CompressiveCache:
    del layer
    return self._next(state, cache.x, jnp.ones(cache.x.shape[:2], bool))
