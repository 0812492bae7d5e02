"""Masked attention over arbitrary key sets, shared by the baselines' segment memories.

Axis legend: B batch, T queries (the segment), S keys (memory + segment), N query heads,
K key/value heads, G = N / K, H key dim, V value dim, D model dim.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def attend(q: jax.Array, k: jax.Array, v: jax.Array, visible: jax.Array) -> jax.Array:
  """Softmax attention: q [B, T, N, H], k [B, S, K, H], v [B, S, K, V], visible [B, T, S] bool
  -> [B, T, N, V] float32. A query that sees no key gets a finite output (ignored by callers)."""
  B, T, N, H = q.shape
  K = k.shape[2]
  qg = q.reshape(B, T, K, N // K, H)  # [B, T, K, G, H]
  logits = jnp.einsum("BTKGH,BSKH->BKGTS", qg, k, preferred_element_type=jnp.float32)
  logits = jnp.where(visible[:, None, None], logits * H ** -0.5, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(logits, axis=-1)  # [B, K, G, T, S]
  out = jnp.einsum("BKGTS,BSKV->BTKGV", probs.astype(v.dtype), v,
                   preferred_element_type=jnp.float32)
  return out.reshape(B, T, N, v.shape[-1])


def causal_visible(q_pos: jax.Array, k_pos: jax.Array, k_valid: jax.Array) -> jax.Array:
  """[B, T, S]: key s is visible to query t when it is not later and is a real token."""
  return (k_pos[None, :] <= q_pos[:, None])[None] & k_valid[:, None, :]


def fifo(store: jax.Array, new: jax.Array) -> jax.Array:
  """Appends new [B, n, ...] to store [B, M, ...] along axis 1, dropping the oldest: [B, M, ...]."""
  M = store.shape[1]
  return jnp.concatenate([store, new], axis=1)[:, -M:]
