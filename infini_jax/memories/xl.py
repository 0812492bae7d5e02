"""Transformer-XL (Dai et al. 2019): each layer also attends to the previous segment's keys and
values, cached without gradient.

RoPE makes the cross-boundary positions exact: the cached keys sit at positions 0..T-1 and the
segment's queries and keys at T..2T-1, so every distance is the true one. The cache holds k and v
before RoPE, so it is rotated again at use. Footprint per layer (paper Table 1):
(d_key + d_value) · H · N numbers, N the segment length.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

from infini_jax.memories.common import attend, causal_visible


class XLCache(NamedTuple):
  k: jax.Array  # [B, T, K, H] the previous segment's keys (before RoPE)
  v: jax.Array  # [B, T, K, V]
  valid: jax.Array  # [B, T] bool: False before the first segment and on padding


@dataclasses.dataclass(frozen=True)
class XL:
  T: int  # segment length = cache length
  K: int
  H: int
  dtype: str
  gated = False

  @classmethod
  def of(cls, cfg) -> "XL":
    return cls(cfg.segment_len, cfg.num_kv_heads, cfg.head_dim, cfg.dtype)

  def init_state(self, batch: int) -> XLCache:
    z = jnp.zeros((batch, self.T, self.K, self.H), jnp.dtype(self.dtype))
    return XLCache(k=z, v=z, valid=jnp.zeros((batch, self.T), bool))

  def footprint(self) -> int:
    return 2 * self.H * self.K * self.T

  def __call__(self, layer, x, q, k, v, state: XLCache, mask):
    del x
    T = q.shape[1]
    mask = jnp.ones(q.shape[:2], bool) if mask is None else mask
    keys = jnp.concatenate([jax.lax.stop_gradient(state.k), k], axis=1)  # [B, 2T, K, H]
    values = jnp.concatenate([jax.lax.stop_gradient(state.v), v], axis=1)  # [B, 2T, K, V]
    k_pos, q_pos = jnp.arange(2 * T), T + jnp.arange(T)
    visible = causal_visible(q_pos, k_pos, jnp.concatenate([state.valid, mask], axis=1))
    out = attend(layer.rope_at(q, q_pos), layer.rope_at(keys, k_pos), values, visible)
    dt = jnp.dtype(self.dtype)
    return out, XLCache(k=k.astype(dt), v=v.astype(dt), valid=mask)
