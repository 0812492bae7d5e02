"""Evaluators: objects configured by name in `config.evals`, each yielding (metric, value) pairs.

The trainer runs them periodically; eval.py runs the same ones on a saved checkpoint.
"""

from __future__ import annotations

import math
from typing import Iterator

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from infini_jax.data import pipeline


def segment_buckets(num_segments: int) -> list[tuple[int, int]]:
  """Context-position buckets in segments (1-based, inclusive): 1, 2, 3-4, 5-8, 9-16, ..."""
  buckets, start = [(1, 1)], 2
  while start <= num_segments:
    stop = 2 * start - 1 if start > 2 else start
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


REGISTRY = {"perplexity": Perplexity, "gates": Gates}


def from_config(config) -> dict[str, object]:
  """name -> evaluator for every entry of config.evals (its 'kind' defaults to its name)."""
  out = {}
  for name, settings in config.evals.items():
    kind = settings.get("kind", name)
    if kind not in REGISTRY:
      raise ValueError(f"unknown evaluator {name!r}; known: {sorted(REGISTRY)}")
    out[name] = REGISTRY[kind](config, **settings.to_dict())
  return out


def run_all(evaluators: dict, model: nnx.Module) -> dict[str, float]:
  """{'NAME/METRIC': value} over all evaluators."""
  return {f"{name}/{k}": v for name, ev in evaluators.items() for k, v in ev.run(model)}
