"""Transformer-XL (Dai et al. 2019): each layer also attends to the previous segment's keys and
values, cached without gradient.

RoPE makes the cross-boundary positions exact: the cached keys sit at positions 0..T-1 and the
segment's queries and keys at T..2T-1, so every distance is the true one. The cache holds k and v
before RoPE, so it is rotated again at use. Footprint per layer (paper Table 1):
(d_key + d_value) · H · N numbers, N the segment length.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from infini_jax.memories.common import KVCache, attend, causal_visible, segment_visible


class XLCache(NamedTuple):
  k: jax.Array  # [B, T, K, H] the previous segment's keys (before RoPE)
  v: jax.Array  # [B, T, K, V]
  valid: jax.Array  # [B, T] bool: False before the first segment and on padding


class XL(nnx.Module):

  def __init__(self, segment_len: int, num_kv_heads: int, head_dim: int, dtype):
    self.T, self.K, self.H, self.dtype = segment_len, num_kv_heads, head_dim, jnp.dtype(dtype)

  def init_state(self, batch: int) -> XLCache:
    shape = (batch, self.T, self.K, self.H)
    return XLCache(k=jnp.zeros(shape, self.dtype), v=jnp.zeros(shape, self.dtype),
                   valid=jnp.zeros((batch, self.T), bool))

  def footprint(self) -> int:
    return 2 * self.H * self.K * self.T

  def flops(self, N: int, T: int) -> tuple[float, float]:
    del N
    return 2 * T, 0.0

  def __call__(self, layer, x, q, k, v, state: XLCache, mask):
    del x
    T = q.shape[1]
    mask = jnp.ones(q.shape[:2], bool) if mask is None else mask
    keys = jnp.concatenate([jax.lax.stop_gradient(state.k), k], axis=1)  # [B, 2T, K, H]
    values = jnp.concatenate([jax.lax.stop_gradient(state.v), v], axis=1)  # [B, 2T, K, V]
    k_pos, q_pos = jnp.arange(2 * T), T + jnp.arange(T)
    visible = causal_visible(q_pos, k_pos, jnp.concatenate([state.valid, mask], axis=1))
    out = attend(layer.rope_at(q, q_pos), layer.rope_at(keys, k_pos), values, visible)
    return out, XLCache(k=k.astype(self.dtype), v=v.astype(self.dtype), valid=mask)

  def init_cache(self, batch: int, T: int, dtype) -> KVCache:
    return KVCache.empty(batch, T, self.K, self.H, dtype)

  def extend(self, layer, q, state: XLCache, cache: KVCache, q_pos):
    """q [B, C, N, H] at positions q_pos [C] of the segment: the previous segment and the
    segment's cache, as `__call__` sees them -> [B, C, N, V] float32."""
    T = self.T
    keys = jnp.concatenate([state.k, cache.k.astype(self.dtype)], axis=1)  # [B, 2T, K, H]
    values = jnp.concatenate([state.v, cache.v.astype(self.dtype)], axis=1)
    B, C = q.shape[:2]
    visible = jnp.concatenate([jnp.broadcast_to(state.valid[:, None, :], (B, C, T)),
                               jnp.broadcast_to(segment_visible(q_pos, T), (B, C, T))], axis=2)
    return attend(layer.rope_at(q, T + q_pos), layer.rope_at(keys, jnp.arange(2 * T)), values,
                  visible)

  def flush(self, layer, state: XLCache, cache: KVCache) -> XLCache:
    del layer
    return XLCache(k=cache.k.astype(self.dtype), v=cache.v.astype(self.dtype),
                   valid=jnp.ones(state.valid.shape, bool))
