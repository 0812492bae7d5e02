"""Memorizing Transformers (Wu et al. 2022): a kNN-augmented layer.

The layer keeps a first-in-first-out store of the keys and values of past segments (M entries per
key/value head, no gradient into it). Each query retrieves its top-k keys by dot product, attends
over them with a softmax, and a learned per-head gate mixes that with causal attention inside the
segment: A = sigmoid(β) A_knn + (1 - sigmoid(β)) A_local. The store is read before the segment is
appended. Retrieval uses q and k without RoPE (the store has no positions). In a model, one layer
is kNN-augmented and the others are Transformer-XL layers (model.py). Footprint of this layer:
(d_key + d_value) · H · M numbers.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

from infini_jax.memories.common import attend, causal_visible, fifo


class KNNStore(NamedTuple):
  k: jax.Array  # [B, M, K, H] oldest first
  v: jax.Array  # [B, M, K, V]
  valid: jax.Array  # [B, M] bool


def top_k_read(store: KNNStore, q: jax.Array, k: int) -> jax.Array:
  """Softmax over each query's top-k stored keys: q [B, T, N, H] -> [B, T, N, V] float32.

  Exactly 0 for a query when the store holds nothing valid yet.
  """
  B, T, N, H = q.shape
  K, V = store.k.shape[2], store.v.shape[-1]
  G = N // K
  qg = q.reshape(B, T, K, G, H)
  scores = jnp.einsum("BTKGH,BMKH->BKGTM", qg, store.k, preferred_element_type=jnp.float32)
  scores = jnp.where(store.valid[:, None, None, None, :], scores * H ** -0.5, -jnp.inf)
  top, idx = jax.lax.top_k(scores, k)  # [B, K, G, T, k]
  values = jnp.moveaxis(store.v, 1, 2)  # [B, K, M, V]
  picked = jnp.take_along_axis(values, idx.reshape(B, K, G * T * k)[..., None], axis=2)
  picked = picked.reshape(B, K, G, T, k, V)
  found = jnp.isfinite(top)
  probs = jax.nn.softmax(jnp.where(found, top, jnp.finfo(jnp.float32).min), axis=-1)
  probs = jnp.where(found.any(-1, keepdims=True), probs * found, 0.0)
  out = jnp.einsum("BKGTk,BKGTkV->BTKGV", probs, picked.astype(jnp.float32))
  return out.reshape(B, T, N, V)


@dataclasses.dataclass(frozen=True)
class Memorizing:
  M: int  # store entries per key/value head
  topk: int
  K: int
  H: int
  dtype: str
  gated = True

  @classmethod
  def of(cls, cfg) -> "Memorizing":
    if cfg.memory_size < 1 or cfg.topk < 1 or cfg.topk > cfg.memory_size:
      raise ValueError(f"memorizing needs 1 <= model.topk={cfg.topk} <= model.memory_size="
                       f"{cfg.memory_size}")
    return cls(cfg.memory_size, cfg.topk, cfg.num_kv_heads, cfg.head_dim, cfg.dtype)

  def init_state(self, batch: int) -> KNNStore:
    z = jnp.zeros((batch, self.M, self.K, self.H), jnp.dtype(self.dtype))
    return KNNStore(k=z, v=z, valid=jnp.zeros((batch, self.M), bool))

  def footprint(self) -> int:
    return 2 * self.H * self.K * self.M

  def __call__(self, layer, x, q, k, v, state: KNNStore, mask):
    del x
    T = q.shape[1]
    mask = jnp.ones(q.shape[:2], bool) if mask is None else mask
    pos = jnp.arange(T)
    local = attend(layer.rope_at(q, pos), layer.rope_at(k, pos), v, causal_visible(pos, pos, mask))
    g = layer.gate_value()[None, None, :, None]  # [1, 1, N, 1]
    out = g * top_k_read(state, q, self.topk) + (1.0 - g) * local
    sg, dt = jax.lax.stop_gradient, jnp.dtype(self.dtype)
    state = KNNStore(k=fifo(state.k, sg(k).astype(dt)), v=fifo(state.v, sg(v).astype(dt)),
                     valid=fifo(state.valid, mask))
    return out, state
