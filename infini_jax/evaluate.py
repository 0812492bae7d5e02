"""Evaluators: objects configured by name in `config.evals`, each yielding (metric, value) pairs.

The trainer runs them periodically (all but those with `during_training` False, such as a long
passkey sweep); eval.py runs all of them on a saved checkpoint and writes their tables and plots
(infini_jax/report.py), which the evaluators themselves never draw, to keep periodic evals cheap.
"""

from __future__ import annotations

import inspect
import itertools
import math
from typing import Iterator

import jax
import numpy as np
from flax import nnx
from tqdm import tqdm

from infini_jax import generate
from infini_jax.data import passkey, pipeline
from infini_jax.data.tokenizer import Tokenizer, get_tokenizer

PAPER_LENGTHS = (32768, 131072, 262144, 524288, 1048576)  # Table 3: 32K ... 1M tokens
POSITIONS = ("start", "middle", "end")


def segment_buckets(num_segments: int) -> list[tuple[int, int]]:
  """Context-position buckets in segments (1-based, inclusive): 1, 2, 3-4, 5-8, 9-16, ..."""
  buckets, start = [(1, 1)], 2
  while start <= num_segments:
    stop = 2 * (start - 1) if start > 2 else start
    buckets.append((start, stop))
    start = stop + 1
  return buckets


class Perplexity:
  """Streaming perplexity over whole held-out documents, overall and by context position.

  Documents are read `batch_size` at a time, each in its own row, in chunks of `chunk_len` tokens
  that carry the model state, so memory stays constant however long a document is. A row whose
  document ended is masked. The metric `ppl_seg_A-B` is the perplexity of the tokens whose
  position falls in segments A..B of their document: with a working memory, later segments are
  easier than the first.
  """

  def __init__(self, config, split: str = "validation", max_documents: int = 16,
               max_tokens: int = 0, chunk_len: int = 2048, batch_size: int = 4, kind: str = ""):
    del kind
    seg = config.model.segment_len
    if chunk_len % seg:
      raise ValueError(f"evals.perplexity.chunk_len={chunk_len} must be a multiple of "
                       f"model.segment_len={seg}")
    self.data, self.split, self.segment_len = config.data, split, seg
    self.max_documents, self.max_tokens = max_documents, max_tokens
    self.chunk_len, self.batch_size = chunk_len, batch_size

  def documents(self) -> list[np.ndarray]:
    docs = list(pipeline.iter_eval_documents(
        self.data.name, self.split, self.data.data_dir, self.data.tokenizer,
        max_documents=self.max_documents, min_length=2,
        **pipeline.builder_kwargs(self.data)))
    if not docs:
      raise ValueError(f"no {self.split!r} documents in {self.data.name!r} to evaluate on")
    return [d[: self.max_tokens + 1] if self.max_tokens else d for d in docs]

  def run(self, model: nnx.Module) -> Iterator[tuple[str, float]]:
    check_vocab(get_tokenizer(self.data.tokenizer), model)
    graphdef, params = nnx.split(model)

    @jax.jit
    def step(params, state, inputs, targets, mask):
      return nnx.merge(graphdef, params).nll(inputs, targets, state, mask)

    docs = self.documents()
    longest = max(len(d) - 1 for d in docs)
    buckets = segment_buckets(-(-longest // self.segment_len))
    sums, counts = np.zeros(len(buckets)), np.zeros(len(buckets))
    bucket_of_segment = np.zeros(buckets[-1][1] + 1, int)
    for i, (a, b) in enumerate(buckets):
      bucket_of_segment[a:b + 1] = i
    B, C = self.batch_size, self.chunk_len
    for first in range(0, len(docs), B):
      group = docs[first:first + B]
      length = max(len(d) - 1 for d in group)
      tokens = np.zeros((B, length + 1), np.int32)
      valid = np.zeros((B, length), bool)
      for r, d in enumerate(group):
        tokens[r, :len(d)] = d
        valid[r, :len(d) - 1] = True
      state = model.init_state(B)
      for start in range(0, length, C):
        inputs = np.zeros((B, C), np.int32)
        targets, mask = np.zeros((B, C), np.int32), np.zeros((B, C), bool)
        n = min(C, length - start)
        inputs[:, :n] = tokens[:, start:start + n]
        targets[:, :n] = tokens[:, start + 1:start + n + 1]
        mask[:, :n] = valid[:, start:start + n]
        nll, state = step(params, state, inputs, targets, mask)
        nll = np.asarray(nll)
        seg = (start + np.arange(C)) // self.segment_len + 1
        which = bucket_of_segment[np.minimum(seg, len(bucket_of_segment) - 1)]
        np.add.at(sums, np.broadcast_to(which, mask.shape)[mask], nll[mask])
        np.add.at(counts, np.broadcast_to(which, mask.shape)[mask], 1)
    yield "ppl", math.exp(sums.sum() / counts.sum())
    yield "tokens", float(counts.sum())
    for (a, b), s, c in zip(buckets, sums, counts):
      if c:
        yield (f"ppl_seg_{a}" if a == b else f"ppl_seg_{a}-{b}"), math.exp(s / c)


def check_vocab(tokenizer: Tokenizer, model: nnx.Module) -> None:
  """Ids past the embedding table would be read as garbage (jnp.take fills them), not fail."""
  if tokenizer.vocab_size > model.cfg.vocab_size:
    raise ValueError(f"the tokenizer has {tokenizer.vocab_size} ids but model.vocab_size is "
                     f"{model.cfg.vocab_size}: use the tokenizer the model was trained with")


def length_label(n: int) -> str:
  """32768 -> '32K', 1048576 -> '1M', 1000 -> '1000' (the paper's column names)."""
  if n % 2**20 == 0:
    return f"{n // 2**20}M"
  return f"{n // 2**10}K" if n % 2**10 == 0 else str(n)


def score_passkey(predicted: str, answer: str) -> tuple[float, bool]:
  """(fraction of the answer's digits right in place, whole answer right) for a decoded reply.

  The reply is what follows "The pass key is", so surrounding whitespace does not count.
  """
  got = predicted.strip()
  return sum(a == b for a, b in zip(got, answer)) / len(answer), got == answer


def _items(values, cast) -> tuple:
  """A list setting: a tuple, or from the command line a string 'a,b' (alone or in a tuple)."""
  out = []
  for v in values if isinstance(values, (list, tuple)) else (values,):
    out += [cast(x.strip()) for x in v.split(",") if x.strip()] if isinstance(v, str) else [cast(v)]
  return tuple(out)


class Passkey:
  """Passkey retrieval (the paper's Table 3): a sweep over prompt lengths x key positions.

  Each prompt (infini_jax.data.passkey: instruction, filler, "The pass key is 71432. Remember
  it. ...", filler, "What is the pass key? The pass key is") is streamed through the model
  `chunk_segments` segments per call, carrying the state, so a 1M-token prompt takes the memory
  of a short one; the answer is then decoded greedily, as many tokens as " 71432" has, and scored
  digit by digit and as a whole. `samples` prompts per cell, `batch_size` at a time. Lengths are
  prompt tokens (without BOS). Metrics: `acc_32K_start` (whole key right) and `digits_32K_start`
  per cell, and `acc`, `digits` over all cells.
  """

  def __init__(self, config, lengths=PAPER_LENGTHS, positions=POSITIONS, samples: int = 4,
               batch_size: int = 4, digits: int = 0, seed: int = 0, chunk_segments: int = 16,
               progress: bool = True, during_training: bool = False, kind: str = ""):
    del kind
    self.lengths = _items(lengths, int)
    self.positions = _items(positions, str)
    self.digits = digits or int(config.data.get("passkey_digits", 5))
    self.samples, self.batch_size, self.seed = samples, batch_size, seed
    self.chunk_segments, self.progress = chunk_segments, progress
    self.during_training = during_training
    if not self.lengths or not self.positions or samples < 1 or batch_size < 1:
      raise ValueError("evals.passkey needs lengths, positions, samples >= 1 and batch_size >= 1; "
                       f"got {self.lengths}, {self.positions}, {samples}, {batch_size}")
    self.tokenizer = get_tokenizer(config.data.tokenizer)
    rng = np.random.default_rng(0)
    for position in self.positions:
      passkey.position_fraction(position, rng)  # A bad position fails here, not after an hour.
    try:
      passkey.make_passkey_example(min(self.lengths), "start", self.digits, rng, self.tokenizer)
    except ValueError as e:
      raise ValueError(f"evals.passkey: {e} (e.g. --config.evals.passkey.lengths=...)") from None

  def run(self, model: nnx.Module) -> Iterator[tuple[str, float]]:
    check_vocab(self.tokenizer, model)
    decoder = generate.Decoder(model, self.chunk_segments)
    batches = -(-self.samples // self.batch_size)
    total = sum(n + 1 for n in self.lengths) * len(self.positions) * batches  # BOS + prompt
    cells = {}
    with tqdm(total=total, unit="tok", unit_scale=True, desc="passkey", leave=False,
              disable=not self.progress) as bar:
      for length, position in itertools.product(self.lengths, self.positions):
        scores = self._cell(decoder, length, position, bar.update)  # [samples, 2]
        cells[length, position] = scores
        bar.set_postfix_str(f"{length_label(length)} {position}: {scores[:, 1].mean():.0%}")
    for (length, position), scores in cells.items():
      yield f"acc_{length_label(length)}_{position}", float(scores[:, 1].mean())
      yield f"digits_{length_label(length)}_{position}", float(scores[:, 0].mean())
    every = np.concatenate(list(cells.values()))
    yield "acc", float(every[:, 1].mean())
    yield "digits", float(every[:, 0].mean())

  def _cell(self, decoder: generate.Decoder, length: int, position: str, progress) -> np.ndarray:
    """[samples, 2]: (digit accuracy, whole key right) per prompt of one cell."""
    prompts = pipeline.iter_passkey_prompts(length, position, self.samples, self.tokenizer,
                                            self.digits, self.seed)
    scores = []
    while batch := list(itertools.islice(prompts, self.batch_size)):
      ids, answers = [p for p, _ in batch], [a for _, a in batch]
      ids += ids[:1] * (self.batch_size - len(ids))  # A fixed batch shape: one compilation.
      reply = max(len(self.tokenizer.encode(" " + a)) for a in answers)
      out = generate.generate(decoder, ids, reply, progress=progress)
      scores += [score_passkey(self.tokenizer.decode(row), a) for row, a in zip(out, answers)]
    return np.array(scores, np.float64)


class Gates:
  """sigmoid(β) per layer and head (the paper's Figure 3): which heads read memory or context."""

  def __init__(self, config, low: float = 0.1, high: float = 0.9, kind: str = ""):
    del config, kind
    self.low, self.high = low, high

  def run(self, model: nnx.Module) -> Iterator[tuple[str, float]]:
    if model.cfg.memory != "infini":
      return
    g = np.asarray(model.gates())  # [layers, heads]
    yield "gate_mean", float(g.mean())
    yield "heads_local", float((g < self.low).sum())
    yield "heads_memory", float((g > self.high).sum())
    yield "heads_mixed", float(((g >= self.low) & (g <= self.high)).sum())
    for layer, row in enumerate(g):
      for head, value in enumerate(row):
        yield f"gate/layer{layer}/head{head}", float(value)


REGISTRY = {"perplexity": Perplexity, "passkey": Passkey, "gates": Gates}


def settings(kind: str, **overrides) -> dict:
  """Every setting of the evaluator `kind` with its default, then `overrides`. A config entry
  written with it lists them all, so any of them can be overridden on the command line
  (`--config.evals.passkey.samples=8`): ml_collections refuses keys that are not there."""
  signature = inspect.signature(REGISTRY[kind].__init__).parameters
  defaults = {name: p.default for name, p in signature.items()
              if p.default is not inspect.Parameter.empty and name != "kind"}
  unknown = sorted(set(overrides) - set(defaults))
  if unknown:
    raise ValueError(f"unknown {kind} evaluator settings {unknown}; it takes {sorted(defaults)}")
  return {**defaults, **overrides}


def from_config(config) -> dict[str, object]:
  """name -> evaluator for every entry of config.evals (its 'kind' defaults to its name)."""
  out = {}
  for name, settings in config.evals.items():
    kind = settings.get("kind", name)
    if kind not in REGISTRY:
      raise ValueError(f"unknown evaluator {name!r}; known: {sorted(REGISTRY)}")
    try:
      out[name] = REGISTRY[kind](config, **settings.to_dict())
    except TypeError as e:  # An unknown setting: name the config entry, not the class.
      raise ValueError(f"evals.{name}: {e}") from None
  return out


def run_all(evaluators: dict, model: nnx.Module) -> dict[str, float]:
  """{'NAME/METRIC': value} over the evaluators that run during training."""
  return {f"{name}/{k}": v for name, ev in evaluators.items()
          if getattr(ev, "during_training", True) for k, v in ev.run(model)}
