"""Model-level parts: RMT's memory tokens (Bulatov et al. 2022) and the token shift (an option
beyond the paper). Each wraps the whole stack for one segment, `enter` before it and `leave`
after it, and carries its own state between segments (infini_jax/model.py).

Decoding (infini_jax/generate.py) runs a segment a few tokens at a time. A part may put `lead`
positions before the segment's tokens in the layers and `trail` after them (RMT: p each, the
read and write tokens). The model runs `before(state)` [B, lead, D] through the layers at a
segment's start, so that they enter the layers' caches at positions 0..lead-1; the segment's
token at position t then sits at lead + t; once the segment is complete it runs `after(state)`
[B, trail, D] over the cached keys and hands their outputs to `flush(state, cache, written)`.
Each part's own `extend` changes the segment's inputs (the token shift) and keeps its cache.

Axis legend: B batch, T segment tokens, C tokens per decoding call, p memory tokens, S shifted
tokens, D model dim.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from infini_jax import sharding as sh
from infini_jax.memories.common import MemoryParam, write_cache
from infini_jax.sections import is_finite, need


@dataclasses.dataclass(frozen=True)
class RMTConfig:
  """model.rmt: the memory tokens read before and written after each segment (memory=rmt needs
  at least 1; the paper's RMT uses 100s)."""

  memory_tokens: int = 0

  def __post_init__(self):
    need(self.memory_tokens >= 0, "rmt.memory_tokens", self.memory_tokens, "must be >= 0")


@dataclasses.dataclass(frozen=True)
class TokenShiftConfig:
  """model.token_shift, an option beyond the paper for any memory (off: size 0): the input of
  token t also gets the embeddings of tokens t-1..t-size, each with a learned per-channel weight
  that starts at `init` (TokenShift). 1 gives the first layer a bag of the last size + 1 tokens,
  in which the current one is not yet told apart; 0 starts as the model without the shift and
  lets the gradient bring the previous tokens in (docs/RESULTS.md measures both)."""

  size: int = 0
  init: float = 1.0

  def __post_init__(self):
    need(self.size >= 0, "token_shift.size", self.size, "must be >= 0 (0 turns it off)")
    need(is_finite(self.init), "token_shift.init", self.init, "must be a finite number")
    need(self.init == 1.0 or self.size > 0, "token_shift.init", self.init,
         "has no effect without model.token_shift.size: set the size > 0 or leave the init at 1")


class RMT(nnx.Module):
  """RMT: p memory tokens are read before the segment and written after it; the outputs of the
  write tokens are the next segment's memory, the only path between segments. The layers attend
  locally over [read, segment, write]."""

  def __init__(self, tokens: int, d_model: int, dtype, param_dtype, rngs: nnx.Rngs):
    self.p, self.dtype = tokens, dtype
    self.lead = self.trail = tokens  # decoding: the read and write tokens around the segment
    self.init = MemoryParam(jax.random.normal(rngs.params(), (tokens, d_model), param_dtype),
                            sharding=(None, sh.EMBED), eager_sharding=False)

  def init_state(self, batch: int) -> jax.Array:
    return jnp.broadcast_to(self.init[...], (batch,) + self.init.shape).astype(self.dtype)

  def enter(self, embed, x, tokens, read, mask):
    """x [B, T, D] -> [B, p + T + p, D] and its mask; the state goes on to `leave`."""
    del embed, tokens
    mask = jnp.pad(mask, [(0, 0), (self.p, self.p)], constant_values=True)
    return jnp.concatenate([read, x, read], axis=1), mask, read

  def leave(self, x, read):
    """[B, p + T + p, D] -> (the segment's [B, T, D], the written tokens [B, p, D])."""
    del read
    return x[:, self.p:-self.p], x[:, -self.p:]

  # Decoding: the layers' caches hold [read, segment, write]; RMT itself keeps nothing more.

  def init_cache(self, batch: int, T: int) -> tuple:
    del batch, T
    return ()

  def before(self, read: jax.Array) -> jax.Array:
    """The read tokens [B, p, D], at positions 0..p-1 of every segment."""
    return read

  def after(self, read: jax.Array) -> jax.Array:
    """The write tokens [B, p, D], at positions p + T..2p + T - 1: they start as the read ones."""
    return read

  def extend(self, embed, x, tokens, read, cache, pos):
    del embed, tokens, read, pos
    return x, cache

  def flush(self, read, cache, written):
    """The next segment's read tokens: the write tokens' outputs [B, p, D]."""
    del read, cache
    return written


class TokenShift(nnx.Module):
  """model.token_shift (TokenShiftConfig): the input of token t also gets the embeddings of
  tokens t-1..t-S, each with a learned per-channel weight, carried across segments in the state,
  so that a key written to memory can say what came before it (a one-layer induction key). `init`
  1 gives the first layer a bag of the last S + 1 tokens; 0 starts as the model without the
  shift."""

  def __init__(self, shift: int, d_model: int, init: float, param_dtype):
    self.S = shift
    self.mix = MemoryParam(jnp.full((shift, d_model), init, param_dtype),
                           sharding=(None, sh.EMBED), eager_sharding=False)

  def init_state(self, batch: int) -> jax.Array:
    return jnp.zeros((batch, self.S), jnp.int32)  # the S ids before the stream: 0

  def shift(self, embed: jax.Array, x: jax.Array, ids: jax.Array) -> jax.Array:
    """x [B, C, D] plus the weighted embeddings of the S tokens before each of its C tokens;
    ids [B, S + C] are the S tokens before x's first one, then x's own."""
    S, C = self.S, x.shape[1]
    e = jnp.take(embed, ids, axis=0)  # [B, S + C, D], one gather for every offset
    for j in range(S):  # token t gets token t-1-j
      x = x + (e[:, S - 1 - j:S - 1 - j + C] * self.mix[j]).astype(x.dtype)
    return x

  def enter(self, embed, x, tokens, prev, mask):
    """The shifted input, and the state: the last S real ids (padding ends a stream)."""
    ids = jnp.concatenate([prev, tokens], axis=1)  # [B, S + T]
    real = jnp.sum(mask, axis=1)  # [B]
    last = jnp.take_along_axis(ids, real[:, None] + jnp.arange(self.S)[None], axis=1)
    return self.shift(embed, x, ids), mask, last

  def leave(self, x, last):
    return x, last

  # Decoding: the cache holds the current segment's ids [B, T]; no positions around them.

  lead = trail = 0

  def init_cache(self, batch: int, T: int) -> jax.Array:
    return jnp.zeros((batch, T), jnp.int32)

  def extend(self, embed, x, tokens, prev, cache, pos):
    """x [B, C, D] of tokens [B, C] at positions pos..pos+C-1 -> (shifted x, cache)."""
    S, C = self.S, tokens.shape[1]
    cache = write_cache(cache, tokens, pos)  # [B, T]
    ids = jnp.concatenate([prev, cache, jnp.zeros_like(tokens)], axis=1)  # [B, S + T + C]
    return self.shift(embed, x, jax.lax.dynamic_slice_in_dim(ids, pos, S + C, axis=1)), cache

  def flush(self, prev, cache, written):
    del written
    return jnp.concatenate([prev, cache], axis=1)[:, -self.S:]
