"""Local attention: causal attention inside the segment only, no state (memory=local; also
memory=full, whose one segment is the whole training length, and RMT's layers)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from infini_jax.memories.common import KVCache, attend, segment_visible


class Local(nnx.Module):

  def __init__(self, num_kv_heads: int, head_dim: int):
    self.K, self.H = num_kv_heads, head_dim

  def init_state(self, batch: int) -> None:
    del batch

  def footprint(self) -> int:
    return 0

  def flops(self, N: int, T: int) -> tuple[float, float]:
    """(keys each query attends to, other matmul FLOPs per token): the segment square."""
    del N
    return T, 0.0

  def __call__(self, layer, x, q, k, v, state, mask):
    del x
    return layer.local(q, k, v, mask), state

  # Decoding: the current segment's tokens attend to its cache.

  def init_cache(self, batch: int, T: int, dtype) -> KVCache:
    return KVCache.empty(batch, T, self.K, self.H, dtype)

  def extend(self, layer, q: jax.Array, state, cache: KVCache, q_pos: jax.Array) -> jax.Array:
    """q [B, C, N, H] at segment positions q_pos [C] -> [B, C, N, V] float32."""
    del state
    T = cache.k.shape[1]
    return attend(layer.rope_at(q, q_pos), layer.rope_at(cache.k, jnp.arange(T)), cache.v,
                  segment_visible(q_pos, T))

  def flush(self, layer, state, cache: KVCache):
    del layer, cache
    return state
