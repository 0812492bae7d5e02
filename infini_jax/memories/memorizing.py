"""Memorizing Transformers (Wu et al. 2022): a kNN-augmented layer.

The layer keeps a first-in-first-out store of the keys and values of past segments (M entries per
key/value head, no gradient into it). Each query retrieves its top-k keys by dot product, attends
over them with a softmax, and a learned per-head gate mixes that with the layer's attention over
the segment and, as in Wu et al., the previous segment's Transformer-XL cache:
A = sigmoid(β) A_knn + (1 - sigmoid(β)) A_xl. The store is read before the segment is appended.
Retrieval uses q and k without RoPE (the store has no positions). In a model, one layer is
kNN-augmented and the others are Transformer-XL layers (memories/__init__.py). Footprint of this
layer: (d_key + d_value) · H · (M + N) numbers, the store and its XL cache.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from infini_jax.memories.common import Gate, KVCache, fifo
from infini_jax.memories.xl import XL, XLCache
from infini_jax.sections import is_finite, need


@dataclasses.dataclass(frozen=True)
class MemorizingConfig:
  """model.memorizing: the kNN store's entries per key/value head (memory=memorizing needs
  memory_size >= topk), the keys each query reads, the kNN layer (-1: 3/4 deep, the 9th of 12
  layers as in Memorizing Transformers) and its gate's start β."""

  memory_size: int = 0
  topk: int = 32
  knn_layer: int = -1
  gate_init: float = 0.0

  def __post_init__(self):
    need(self.memory_size >= 0, "memorizing.memory_size", self.memory_size, "must be >= 0")
    need(self.topk >= 1, "memorizing.topk", self.topk, "must be >= 1")
    need(self.knn_layer >= -1, "memorizing.knn_layer", self.knn_layer,
         "must be a layer index, or -1 for 3/4 deep")
    need(is_finite(self.gate_init), "memorizing.gate_init", self.gate_init,
         "must be a finite number")


class KNNStore(NamedTuple):
  k: jax.Array  # [B, M, K, H] oldest first
  v: jax.Array  # [B, M, K, V]
  valid: jax.Array  # [B, M] bool


class KNNState(NamedTuple):
  store: KNNStore
  xl: XLCache


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


class Memorizing(nnx.Module):

  def __init__(self, memory_size: int, topk: int, num_heads: int, xl: XL, gate_init: float):
    self.M, self.topk, self.K, self.H, self.dtype = memory_size, topk, xl.K, xl.H, xl.dtype
    self.xl = xl  # the segment and the one before, as in the model's other layers
    self.gate = Gate(num_heads, gate_init)

  def init_state(self, batch: int) -> KNNState:
    z = jnp.zeros((batch, self.M, self.K, self.H), self.dtype)
    return KNNState(KNNStore(k=z, v=z, valid=jnp.zeros((batch, self.M), bool)),
                    self.xl.init_state(batch))

  def footprint(self) -> int:
    return 2 * self.H * self.K * self.M + self.xl.footprint()

  def flops(self, N: int, T: int) -> tuple[float, float]:
    keys, _ = self.xl.flops(N, T)  # score the whole store, read the top k
    return keys, 2 * self.M * N * self.H + 2 * self.topk * N * self.H

  def __call__(self, layer, x, q, k, v, state: KNNState, mask):
    local, xl = self.xl(layer, x, q, k, v, state.xl, mask)
    out = self.gate(top_k_read(state.store, q, self.topk), local, q)
    mask = jnp.ones(q.shape[:2], bool) if mask is None else mask
    return out, KNNState(self._append(state.store, k, v, mask), xl)

  def _append(self, store: KNNStore, k, v, mask) -> KNNStore:
    sg = jax.lax.stop_gradient
    return KNNStore(k=fifo(store.k, sg(k).astype(self.dtype)),
                    v=fifo(store.v, sg(v).astype(self.dtype)), valid=fifo(store.valid, mask))

  def init_cache(self, batch: int, T: int, dtype) -> KVCache:
    return self.xl.init_cache(batch, T, dtype)

  def extend(self, layer, q, state: KNNState, cache: KVCache, q_pos):
    local = self.xl.extend(layer, q, state.xl, cache, q_pos)
    return self.gate(top_k_read(state.store, q, self.topk), local, q)

  def flush(self, layer, state: KNNState, cache: KVCache) -> KNNState:
    mask = jnp.ones(cache.k.shape[:2], bool)
    return KNNState(self._append(state.store, cache.k, cache.v, mask),
                    self.xl.flush(layer, state.xl, cache))
