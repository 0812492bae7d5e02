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

from infini_jax.memories.common import attend, causal_visible, fifo


class CompressiveCache(NamedTuple):
  fine: jax.Array  # [B, T, D] the previous segment's layer inputs
  fine_valid: jax.Array  # [B, T]
  coarse: jax.Array  # [B, c, D] compressed older segments, oldest first
  coarse_valid: jax.Array  # [B, c]


@dataclasses.dataclass(frozen=True)
class Compressive:
  T: int  # segment length = fine memory length
  D: int
  c: int  # compressed slots
  r: int  # compression rate
  dtype: str
  gated = False

  @classmethod
  def of(cls, cfg) -> "Compressive":
    if cfg.compress_rate < 1 or cfg.segment_len % cfg.compress_rate or cfg.memory_size < 1:
      raise ValueError(
          f"compressive needs model.compress_rate={cfg.compress_rate} to divide model.segment_len="
          f"{cfg.segment_len} and model.memory_size={cfg.memory_size} >= 1 compressed slots")
    return cls(cfg.segment_len, cfg.d_model, cfg.memory_size, cfg.compress_rate, cfg.dtype)

  def init_state(self, batch: int) -> CompressiveCache:
    dt = jnp.dtype(self.dtype)
    return CompressiveCache(
        fine=jnp.zeros((batch, self.T, self.D), dt), fine_valid=jnp.zeros((batch, self.T), bool),
        coarse=jnp.zeros((batch, self.c, self.D), dt), coarse_valid=jnp.zeros((batch, self.c), bool))

  def footprint(self) -> int:
    return self.D * (self.c + self.T)

  def compress(self, fine: jax.Array, valid: jax.Array) -> tuple[jax.Array, jax.Array]:
    """[B, T, D] -> [B, T/r, D]: the mean of the real states in each group of r."""
    B, T, D = fine.shape
    w = valid.reshape(B, T // self.r, self.r, 1).astype(jnp.float32)
    x = fine.reshape(B, T // self.r, self.r, D).astype(jnp.float32)
    n = w.sum(2)  # [B, T/r, 1]
    return (x * w).sum(2) / jnp.maximum(n, 1.0), n[..., 0] > 0

  def __call__(self, layer, x, q, k, v, state: CompressiveCache, mask):
    B, T = q.shape[:2]
    c = self.c
    mask = jnp.ones((B, T), bool) if mask is None else mask
    history = jax.lax.stop_gradient(jnp.concatenate([state.coarse, state.fine], axis=1))
    hk, hv = layer.project_kv(history.astype(x.dtype))  # [B, c + T, K, H], [B, c + T, K, V]
    keys, values = jnp.concatenate([hk, k], axis=1), jnp.concatenate([hv, v], axis=1)
    k_pos, q_pos = jnp.arange(c + 2 * T), c + T + jnp.arange(T)
    valid = jnp.concatenate([state.coarse_valid, state.fine_valid, mask], axis=1)
    out = attend(layer.rope_at(q, q_pos), layer.rope_at(keys, k_pos), values,
                 causal_visible(q_pos, k_pos, valid))
    pooled, pooled_valid = self.compress(state.fine, state.fine_valid)
    dt = jnp.dtype(self.dtype)
    return out, CompressiveCache(
        fine=jax.lax.stop_gradient(x).astype(dt), fine_valid=mask,
        coarse=fifo(state.coarse, pooled.astype(dt)),
        coarse_valid=fifo(state.coarse_valid, pooled_valid))
