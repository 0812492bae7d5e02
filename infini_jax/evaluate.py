"""Evaluators: objects configured by name in `config.evals`, each yielding (metric, value) pairs.

The trainer runs them periodically (all but those with `during_training` False, such as a long
passkey sweep); eval.py runs all of them on a saved checkpoint and writes their tables and plots
(infini_jax/report.py), which the evaluators themselves never draw, to keep periodic evals cheap.
"""

from __future__ import annotations

import functools
import inspect
import itertools
import math
from typing import Iterator

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm import tqdm

from infini_jax.data import passkey, pipeline
from infini_jax.data.tokenizer import Tokenizer, get_tokenizer
from infini_jax.summarise import Summarise

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


def perplexity(mean_nll: float) -> float:
  """exp(mean_nll); inf where that overflows a float (a diverged run's loss of 7e6 must not
  stop the run that logs it)."""
  return math.inf if mean_nll >= math.log(np.finfo(np.float64).max) else math.exp(mean_nll)


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
    seg = config.model.shape.segment_len
    if chunk_len % seg:
      raise ValueError(f"evals.perplexity.chunk_len={chunk_len} must be a multiple of "
                       f"model.shape.segment_len={seg}")
    self.data, self.split, self.segment_len = config.data, split, seg
    self.seq_len = config.seq_len  # passkey_length 0 is read as "fit the training length"
    self.max_documents, self.max_tokens = max_documents, max_tokens
    self.chunk_len, self.batch_size = chunk_len, batch_size

  def documents(self) -> list[np.ndarray]:
    kwargs = pipeline.builder_kwargs(self.data, self.seq_len)
    kwargs.pop("tokenizer", None)  # passed on by iter_eval_documents
    docs = list(pipeline.iter_eval_documents(
        self.data.name, self.split, self.data.data_dir, self.data.tokenizer,
        max_documents=self.max_documents, min_length=2, **kwargs))
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
    yield "ppl", perplexity(sums.sum() / counts.sum())
    yield "tokens", float(counts.sum())
    for (a, b), s, c in zip(buckets, sums, counts):
      if c:
        yield (f"ppl_seg_{a}" if a == b else f"ppl_seg_{a}-{b}"), perplexity(s / c)


def check_vocab(tokenizer: Tokenizer, model: nnx.Module) -> None:
  """Ids past the embedding table would be read as garbage (jnp.take fills them), not fail."""
  if tokenizer.vocab_size > model.cfg.shape.vocab_size:
    raise ValueError(f"the tokenizer has {tokenizer.vocab_size} ids but model.shape.vocab_size is "
                     f"{model.cfg.shape.vocab_size}: use the tokenizer the model was trained with")


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
  it. ...", filler, "What is the pass key? The pass key is"), followed by the answer " 71432", is
  streamed through the segment scan `chunk_segments` segments per call, carrying the state, so a
  1M-token prompt takes the memory of a short one. The model's most likely token at each answer
  position is compared with the answer (teacher forcing): the whole key is right exactly when
  greedy decoding would produce it, and this works for every memory (the baselines' states have
  no decoding cache). Digits are scored in place given the right earlier digits. `samples`
  prompts per cell, `batch_size` at a time. Lengths are prompt tokens (without BOS). The filler
  is the training data's (config.data.passkey_filler): with book text, it is cut from `split`'s
  books, "test" for the sweeps, "validation" for a check during training. Metrics:
  `acc_32K_start` (whole key right) and `digits_32K_start` per cell, and `acc`, `digits` over
  all cells.
  """

  def __init__(self, config, lengths=PAPER_LENGTHS, positions=POSITIONS, samples: int = 4,
               batch_size: int = 4, digits: int = 0, seed: int = 0, chunk_segments: int = 16,
               progress: bool = True, during_training: bool = False, split: str = "test",
               kind: str = ""):
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
    self.split = split
    self.filler = config.data.get("passkey_filler", "repeat")
    self.filler_glob = config.data.get("passkey_filler_glob", "")
    # A missing book folder or split fails here, not at the first evaluation an hour in.
    passkey.filler_tokens(self.filler, self.filler_glob, split, self.tokenizer)
    rng = np.random.default_rng(0)
    for position in self.positions:
      passkey.position_fraction(position, rng)  # A bad position fails here, not after an hour.
    try:
      passkey.make_passkey_example(min(self.lengths), "start", self.digits, rng, self.tokenizer)
    except ValueError as e:
      raise ValueError(f"evals.passkey: {e} (e.g. --config.evals.passkey.lengths=...)") from None

  def run(self, model: nnx.Module) -> Iterator[tuple[str, float]]:
    check_vocab(self.tokenizer, model)
    scorer = TeacherForced(model, self.chunk_segments)
    batches = -(-self.samples // self.batch_size)
    total = sum(n + 1 for n in self.lengths) * len(self.positions) * batches  # BOS + prompt
    cells = {}
    with tqdm(total=total, unit="tok", unit_scale=True, desc="passkey", leave=False,
              disable=not self.progress) as bar:
      for length, position in itertools.product(self.lengths, self.positions):
        scores = self._cell(scorer, length, position, bar.update)  # [samples, 2]
        cells[length, position] = scores
        bar.set_postfix_str(f"{length_label(length)} {position}: {scores[:, 1].mean():.0%}")
    for (length, position), scores in cells.items():
      yield f"acc_{length_label(length)}_{position}", float(scores[:, 1].mean())
      yield f"digits_{length_label(length)}_{position}", float(scores[:, 0].mean())
    every = np.concatenate(list(cells.values()))
    yield "acc", float(every[:, 1].mean())
    yield "digits", float(every[:, 0].mean())

  def _cell(self, scorer: "TeacherForced", length: int, position: str, progress) -> np.ndarray:
    """[samples, 2]: (digit accuracy, whole key right) per prompt of one cell."""
    prompts = pipeline.iter_passkey_prompts(length, position, self.samples, self.tokenizer,
                                            self.digits, self.seed, self.split, self.filler,
                                            self.filler_glob)
    scores = []
    while batch := list(itertools.islice(prompts, self.batch_size)):
      answers = [a for _, a in batch]
      replies = [self.tokenizer.encode_array(" " + a) for a in answers]
      rows = [(p, r) for (p, _), r in zip(batch, replies)]
      rows += rows[:1] * (self.batch_size - len(rows))  # A fixed batch shape: few compilations.
      predicted = scorer(rows, progress)[:len(answers)]
      scores += [score_passkey(self.tokenizer.decode(p), a) for p, a in zip(predicted, answers)]
    return np.array(scores, np.float64)


class TeacherForced:
  """The model's most likely next token at the reply positions of prompt + reply rows.

  Rows are streamed through the segment scan in chunks of `chunk_segments` segments, carrying
  the state: the chunks before the first reply only update the state (no logits), the few
  segments holding the replies return their argmax. Compiled once per distinct chunk shape.
  """

  def __init__(self, model: nnx.Module, chunk_segments: int = 16):
    self.T = model.cfg.shape.segment_len
    self.chunk_len = chunk_segments * self.T
    self.model = model
    graphdef, self.params = nnx.split(model)

    @functools.partial(jax.jit, donate_argnums=1)
    def consume(params, state, tokens, mask):
      _, state = nnx.merge(graphdef, params)(tokens, state, mask)
      return state

    @jax.jit
    def predict(params, state, tokens, mask):
      logits, _ = nnx.merge(graphdef, params)(tokens, state, mask)
      return jnp.argmax(logits, axis=-1).astype(jnp.int32)  # [B, C]

    self._consume, self._predict = consume, predict

  def __call__(self, rows: list[tuple[np.ndarray, np.ndarray]],
               progress=None) -> list[np.ndarray]:
    """rows: (prompt ids [P], reply ids [R]) -> per row the predicted reply ids [R]."""
    seqs = [np.concatenate([p, r]).astype(np.int32) for p, r in rows]
    B, L = len(seqs), max(len(s) for s in seqs)
    tokens = np.zeros((B, L), np.int32)
    mask = np.zeros((B, L), bool)
    for i, s in enumerate(seqs):
      tokens[i, :len(s)], mask[i, :len(s)] = s, True
    # Position t predicts token t + 1: the replies are predicted from positions P - 1 ... P + R - 2.
    first = min(len(p) for p, _ in rows) - 1
    tail = first // self.T * self.T  # the segment-aligned start of the part with logits
    # Copies: init_state may hand out one zeros buffer twice (XL's keys and values), and
    # `consume` donates every leaf.
    state = jax.tree.map(jnp.copy, self.model.init_state(B))
    for start in range(0, tail, self.chunk_len):
      end = min(start + self.chunk_len, tail)
      state = self._consume(self.params, state, tokens[:, start:end], mask[:, start:end])
      if progress:
        progress(B * (end - start))
    length = -(-(L - tail) // self.T) * self.T  # whole segments: padded with mask False
    pad = [(0, 0), (0, tail + length - L)]
    out = np.asarray(self._predict(self.params, state, np.pad(tokens[:, tail:], pad),
                                   np.pad(mask[:, tail:], pad)))
    if progress:
      progress(B * (L - tail))
    return [out[i, len(p) - 1 - tail:len(p) - 1 - tail + len(r)] for i, (p, r) in enumerate(rows)]


class Gates:
  """sigmoid(β) per layer and head (the paper's Figure 3): which heads read memory or context;
  with model.infini.decay also each key/value head's learned decay γ."""

  def __init__(self, config, low: float = 0.1, high: float = 0.9, kind: str = ""):
    del config, kind
    self.low, self.high = low, high

  def run(self, model: nnx.Module) -> Iterator[tuple[str, float]]:
    g = np.asarray(model.gates())  # [gated layers, heads]: the model's `Gate`s
    if not g.size:
      return
    yield "gate_mean", float(g.mean())
    yield "heads_local", float((g < self.low).sum())
    yield "heads_memory", float((g > self.high).sum())
    yield "heads_mixed", float(((g >= self.low) & (g <= self.high)).sum())
    for layer, row in enumerate(g):
      for head, value in enumerate(row):
        yield f"gate/layer{layer}/head{head}", float(value)
    for layer, row in enumerate(np.asarray(model.decays())):
      for head, value in enumerate(row):
        yield f"decay/layer{layer}/head{head}", float(value)


REGISTRY = {"perplexity": Perplexity, "passkey": Passkey, "gates": Gates, "summarise": Summarise}


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
