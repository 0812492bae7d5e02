"""Streaming generation: any context goes into the compressive memory, segment by segment.

Axis legend: B batch, L tokens fed, C tokens per call, T segment length, W vocabulary size.

The decoding state (`Stream`) is what the segment scan carries, plus the current segment so far:
  memory  the model state (per layer M [B, K, H, V], z [B, K, H]): every completed segment
  cache   per layer the keys and values of the current segment's tokens, [B, T, K, H] each
          (RMT's also of its read and write tokens, [B, p + T + p, K, H])
  pos     how many tokens of the current segment are in the cache, 0 <= pos < T
Its size depends on the model and the batch only, so memory and time per token stay the same
however long the context grows. Decoding computes exactly what one forward pass over the whole
sequence computes: positions restart at 0 in every segment, a token reads the memory of the
completed segments and its own segment's earlier tokens, and a segment is written into the memory
(`flush`) only once all of its T tokens have read the old one.

  decoder = Decoder(model)
  logits, stream = decoder.feed(decoder.start(batch), prompt)   # any length, fixed-shape chunks
  logits, stream = decoder.step(stream, next_tokens)            # one token per row
  tokens = generate(decoder, prompts, max_new_tokens=32, temperature=0.8, top_p=0.95)
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


class Stream(NamedTuple):
  """The decoding state of a batch (see the module docstring). Use each one once: `feed` and
  `step` donate its buffers to the stream they return (in-place updates, no copies)."""

  memory: tuple
  cache: tuple
  pos: int


class Decoder:
  """A model's jitted streaming functions, each compiled once for its fixed shapes.

  chunk_segments: whole segments per call when feeding a long context; more is fewer, larger
  calls (faster), at the price of activation memory for that many segments.
  """

  def __init__(self, model: nnx.Module, chunk_segments: int = 16):
    if chunk_segments < 1:
      raise ValueError(f"chunk_segments must be >= 1; got {chunk_segments}")
    self.model = model
    self.segment_len = model.cfg.shape.segment_len
    self.chunk_len = chunk_segments * self.segment_len
    graphdef, self.params = nnx.split(model)

    # The state buffers are donated: each call updates them in place, so feeding a million
    # tokens holds one copy of the state, not one per call.
    @functools.partial(jax.jit, donate_argnums=1)
    def consume(params, memory, tokens, mask):  # tokens, mask [B, chunk_len]
      # Only the state is returned: jit drops the unused logits of the scan.
      _, memory = nnx.merge(graphdef, params)(tokens, memory, mask)
      return memory

    @functools.partial(jax.jit, donate_argnums=2)
    def extend(params, memory, cache, tokens, pos, last):  # tokens [B, C] -> logits [B, W]
      model = nnx.merge(graphdef, params)
      h, cache = model.extend(tokens, memory, cache, pos)
      return model.logits(jax.lax.dynamic_slice_in_dim(h, last, 1, axis=1))[:, 0], cache

    @functools.partial(jax.jit, donate_argnums=2)
    def begin(params, memory, cache):
      return nnx.merge(graphdef, params).begin(memory, cache)

    @functools.partial(jax.jit, donate_argnums=1)
    def flush(params, memory, cache):
      return nnx.merge(graphdef, params).flush(memory, cache)

    self._consume, self._begin, self._extend, self._flush = consume, begin, extend, flush

  def start(self, batch: int) -> Stream:
    """An empty context for `batch` rows."""
    return Stream(self.model.init_state(batch), self.model.init_cache(batch), 0)

  def feed(self, stream: Stream, tokens, progress: Callable[[int], None] | None = None):
    """Appends tokens [B, L] (L >= 1) to every row -> (logits after the last one [B, W], stream).

    Three fixed shapes serve any L: the current segment is completed through the cache, whole
    segments go through the segment scan `chunk_segments` at a time (the last chunk padded with
    masked segments, which change no state), and the rest (1..T tokens) goes into the cache.
    `progress(n)` is called with the number of tokens each call consumed.
    """
    tokens = np.asarray(tokens, np.int32)
    if tokens.ndim != 2 or tokens.shape[1] < 1:
      raise ValueError(f"feed takes tokens [B, L] with L >= 1; got shape {tokens.shape}")
    B, L = tokens.shape
    T, i = self.segment_len, 0
    if stream.pos:  # Complete the current segment first.
      i = min(L, T - stream.pos)
      logits, stream = self._feed_segment(stream, tokens[:, :i])
      if progress:
        progress(i)
      if i == L:
        return logits, stream
    memory = stream.memory
    while L - i > T:  # Leave 1..T tokens for the cache: their last one gives the logits.
      n = min(self.chunk_len, (L - i - 1) // T * T)
      chunk = np.zeros((B, self.chunk_len), np.int32)
      chunk[:, :n] = tokens[:, i:i + n]
      mask = np.arange(self.chunk_len)[None, :].repeat(B, 0) < n
      memory = self._consume(self.params, memory, chunk, mask)
      i += n
      if progress:
        progress(n)
    logits, stream = self._feed_segment(stream._replace(memory=memory), tokens[:, i:])
    if progress:
      progress(L - i)
    return logits, stream

  def step(self, stream: Stream, tokens) -> tuple[jax.Array, Stream]:
    """Appends one token per row, tokens [B] -> (logits [B, W], stream). Time per call and
    memory do not depend on how long the context already is."""
    tokens = jnp.asarray(tokens, jnp.int32)[:, None]
    return self._run(stream, tokens, 1)

  def _feed_segment(self, stream: Stream, tokens: np.ndarray) -> tuple[jax.Array, Stream]:
    """1 <= n <= T - pos tokens [B, n] into the current segment, padded to one segment's width."""
    B, n = tokens.shape
    padded = np.zeros((B, self.segment_len), np.int32)
    padded[:, :n] = tokens
    return self._run(stream, padded, n)

  def _run(self, stream: Stream, tokens, n: int) -> tuple[jax.Array, Stream]:
    """tokens [B, C], their first n real (the rest padding), into the current segment ->
    (logits after the last real one [B, W], stream)."""
    cache = stream.cache
    if stream.pos == 0:  # A new segment: what the model puts before it (RMT's read tokens).
      cache = self._begin(self.params, stream.memory, cache)
    logits, cache = self._extend(self.params, stream.memory, cache, tokens,
                                 jnp.int32(stream.pos), jnp.int32(n - 1))
    return logits, self._advance(stream._replace(cache=cache), n)

  def _advance(self, stream: Stream, n: int) -> Stream:
    pos = stream.pos + n
    if pos < self.segment_len:
      return stream._replace(pos=pos)
    # The segment is complete: every one of its tokens has read the old memory; now write it.
    return Stream(self._flush(self.params, stream.memory, stream.cache), stream.cache, 0)


@functools.partial(jax.jit, static_argnames=("temperature", "top_p"))
def sample(logits: jax.Array, key: jax.Array, temperature: float = 0.0,
           top_p: float = 1.0) -> jax.Array:
  """Next tokens [B] from logits [B, W]: greedy at temperature 0, else from softmax(logits / t)
  restricted to the smallest set of most likely tokens whose probability reaches top_p."""
  if temperature == 0.0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  logits = logits.astype(jnp.float32) / temperature
  if top_p < 1.0:
    ranked = jnp.sort(logits, axis=-1)[:, ::-1]  # [B, W] most likely first
    probs = jax.nn.softmax(ranked, axis=-1)
    # A token is kept while the more likely ones hold less than top_p: the first always is.
    kept = jnp.cumsum(probs, axis=-1) - probs < top_p
    floor = jnp.min(jnp.where(kept, ranked, jnp.inf), axis=-1, keepdims=True)  # [B, 1]
    logits = jnp.where(logits >= floor, logits, -jnp.inf)
  return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


def generate(model: nnx.Module | Decoder, prompts: Sequence[Sequence[int]] | np.ndarray,
             max_new_tokens: int, *, temperature: float = 0.0, top_p: float = 1.0,
             seed: int = 0, progress: Callable[[int], None] | None = None) -> np.ndarray:
  """max_new_tokens continuations of each prompt -> int32 [B, max_new_tokens].

  Prompts may differ in length (left-aligned): the common prefix is fed at once, then each row
  keeps reading its own prompt token by token while shorter rows already generate, so every row
  gets exactly what it would get alone. Rows of very different lengths are slow (the difference
  goes one token at a time); group prompts by length for long contexts.
  """
  if max_new_tokens < 1:
    raise ValueError(f"max_new_tokens must be >= 1; got {max_new_tokens}")
  if temperature < 0 or not 0 < top_p <= 1:
    raise ValueError(f"need temperature >= 0 and 0 < top_p <= 1; got {temperature}, {top_p}")
  decoder = model if isinstance(model, Decoder) else Decoder(model)
  rows = [np.asarray(p, np.int32).reshape(-1) for p in prompts]
  lengths = np.array([len(r) for r in rows])
  if not rows or lengths.min() < 1:
    raise ValueError("generate needs at least one prompt, each at least one token long "
                     "(start it with the tokenizer's BOS id)")
  B, common = len(rows), int(lengths.min())
  prompt = np.zeros((B, lengths.max()), np.int32)
  for r, row in enumerate(rows):
    prompt[r, :len(row)] = row
  logits, stream = decoder.feed(decoder.start(B), prompt[:, :common], progress)
  out = np.zeros((B, max_new_tokens), np.int32)
  key = jax.random.key(seed)
  for t in range(common, int(lengths.max()) + max_new_tokens):  # t: the position predicted
    key, sub = jax.random.split(key)
    tokens = np.array(sample(logits, sub, temperature=temperature, top_p=top_p))
    made = t - lengths  # [B] index of the generated token at position t (< 0: still prompt)
    emit = (made >= 0) & (made < max_new_tokens)
    out[emit, made[emit]] = tokens[emit]
    if (made >= max_new_tokens - 1).all():
      break
    reading = t < lengths  # Rows still inside their prompt read it, whatever was sampled.
    if reading.any():
      tokens[reading] = prompt[reading, t]
    logits, stream = decoder.step(stream, tokens)
    if progress and reading.any():
      progress(1)
  return out
