"""What the segment memories share: the parameter tags, the gate, masked attention over any key
set, and the rule that a segment without a real token changes no state.

Axis legend: B batch, T queries (the segment), S keys (memory + segment), N query heads,
K key/value heads, G = N / K, H key dim, V value dim, D model dim.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from infini_jax import sharding as sh


class MemoryParam(nnx.Param):
  """A parameter of a memory rather than of the language model under it (RMT's memory tokens,
  token_shift's weights). A converted LLM lacks them: `init_from` leaves them at this run's
  initial values (infini_jax/checkpoint.py)."""


class GateParam(MemoryParam):
  """A gate of the memory path (β and the options' per-head parameters): float32, its own
  learning rate and no weight decay (infini_jax/optim.py), reported by the `gates` evaluator.
  A public reproduction stalled because its gates, decayed towards 0 at the base rate, never
  left sigmoid(β) = 1/2 (PAPER.md)."""


def gate_param(value: jax.Array, names) -> GateParam:
  return GateParam(jnp.asarray(value, jnp.float32), sharding=names, eager_sharding=False)


class Gate(nnx.Module):
  """The paper's eq. 6: A = g·A_mem + (1 - g)·A_dot with g = sigmoid(β), one β per query head.

  additive (model.infini.memory_add): g·A_mem + A_dot, so that a head keeps its whole local output,
  also in the first segment, whose memory is empty.
  """

  def __init__(self, num_heads: int, init: float, additive: bool = False):
    self.beta = gate_param(jnp.full((num_heads,), init), (sh.HEADS,))
    self.additive = additive

  def logit(self, q: jax.Array) -> jax.Array:
    """β as [1, 1, N], or per token [B, T, N] (QueryGate)."""
    del q
    return self.beta[...][None, None, :]

  def flops(self, N: int, K: int, H: int) -> float:
    del N, K, H
    return 0.0

  def value(self) -> jax.Array:
    """sigmoid(β) [N]: 1 reads only the memory, 0 only the local context."""
    return jax.nn.sigmoid(self.beta[...])

  def __call__(self, a_mem: jax.Array, a_dot: jax.Array, q: jax.Array) -> jax.Array:
    """a_mem, a_dot [B, T, N, V], q [B, T, N, H] (before RoPE) -> [B, T, N, V] float32."""
    g = jax.nn.sigmoid(self.logit(q))[..., None]  # [B or 1, T or 1, N, 1]
    return g * a_mem + (a_dot if self.additive else (1.0 - g) * a_dot)


def keep_if_empty(mask: jax.Array | None, new, old):
  """`new` state, but `old` in the batch rows whose segment holds no real token (mask [B, T]):
  padding segments, which the streaming decoder and the evaluators append, change nothing."""
  if mask is None:
    return new
  real = jnp.any(mask, axis=1)  # [B]
  pick = lambda n, o: jnp.where(real.reshape((-1,) + (1,) * (n.ndim - 1)), n, o)  # noqa: E731
  return jax.tree.map(pick, new, old)


def attend(q: jax.Array, k: jax.Array, v: jax.Array, visible: jax.Array) -> jax.Array:
  """Softmax attention: q [B, T, N, H], k [B, S, K, H], v [B, S, K, V], visible [B or 1, T, S]
  bool -> [B, T, N, V] float32. A query that sees no key gets a finite output (ignored)."""
  B, T, N, H = q.shape
  K = k.shape[2]
  qg = q.reshape(B, T, K, N // K, H)  # [B, T, K, G, H]
  logits = jnp.einsum("BTKGH,BSKH->BKGTS", qg, k, preferred_element_type=jnp.float32)
  logits = jnp.where(visible[:, None, None], logits * H ** -0.5, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(logits, axis=-1)  # [B, K, G, T, S]
  # Probabilities stay float32 (not the compute dtype): decoding then matches the forward pass.
  out = jnp.einsum("BKGTS,BSKV->BTKGV", probs, v.astype(jnp.float32))
  return out.reshape(B, T, N, v.shape[-1])


def causal_visible(q_pos: jax.Array, k_pos: jax.Array, k_valid: jax.Array) -> jax.Array:
  """[B, T, S]: key s is visible to query t when it is not later and is a real token."""
  return (k_pos[None, :] <= q_pos[:, None])[None] & k_valid[:, None, :]


def fifo(store: jax.Array, new: jax.Array) -> jax.Array:
  """Appends new [B, n, ...] to store [B, M, ...] along axis 1, dropping the oldest: [B, M, ...]."""
  M = store.shape[1]
  return jnp.concatenate([store, new], axis=1)[:, -M:]


class KVCache(NamedTuple):
  """The current segment during decoding: keys k [B, T, K, H] (before RoPE), values v
  [B, T, K, V], and for memories that keep layer inputs (Compressive) x [B, T, D], else None."""

  k: jax.Array
  v: jax.Array
  x: jax.Array | None = None

  @classmethod
  def empty(cls, batch: int, T: int, K: int, H: int, dtype, inputs_dim: int = 0) -> "KVCache":
    x = jnp.zeros((batch, T, inputs_dim), dtype) if inputs_dim else None
    return cls(jnp.zeros((batch, T, K, H), dtype), jnp.zeros((batch, T, K, H), dtype), x)

  def write(self, x: jax.Array, k: jax.Array, v: jax.Array, pos: jax.Array) -> "KVCache":
    """The next C tokens' x [B, C, D], k, v written at slots pos..pos+C-1 (slots >= T dropped)."""
    return KVCache(write_cache(self.k, k, pos), write_cache(self.v, v, pos),
                   None if self.x is None else write_cache(self.x, x.astype(self.x.dtype), pos))


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
  return jnp.where(written.reshape((1, T) + (1,) * (buf.ndim - 2)), new.astype(buf.dtype), buf)


def segment_visible(q_pos: jax.Array, T: int) -> jax.Array:
  """[1, C, T]: decoding's causal mask over the segment's cache: slot s is visible to the query
  at position p iff s <= p (later slots are stale or not written yet)."""
  return (jnp.arange(T)[None, :] <= q_pos[:, None])[None]
