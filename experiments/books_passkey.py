"""The passkey sweep with book filler: whole-key accuracy by prompt length and key position, the
filler drawn from the held-out (test) books, the model of a training run's checkpoint.

  python -m experiments.books_passkey --config=configs/books_passkey.py:memory=infini \
      --workdir=runs/books/passkey/infini/seed0 --lengths=4096,32768,131072 --samples=5

  # which layer's memory the retrieval needs: the same cells with layer 0's reads emptied
  python -m experiments.books_passkey ... --empty_reads=0 --out=empty_reads_0.json
  # what layer 0's later writes cost: its memory held at its state after 4,096 tokens
  python -m experiments.books_passkey ... --hold=0:4096 --out=hold_0_4096.json

Scoring and prompts are the passkey evaluator's (infini_jax/evaluate.py: teacher-forced greedy
digits, the state carried through the whole prompt, the filler the config's book text). Writes
WORKDIR/sweep.json ({"acc": {length: {position: fraction}}, "digits": ..., "samples", "step",
"seconds", "empty_reads", "hold"}) after every cell, so an interrupted sweep keeps what it
measured. `--empty_reads` empties the memory reads of those layers as experiments/memory_ablation.py
does (the writes go on); `--hold=L:N` keeps layer L's memory as it was after the first N tokens
(whole chunks of 32 segments), while the other layers' stream on. Name their --out apart from
sweep*.json, which books_compare reads as the run as trained.
"""

from __future__ import annotations

import json
import os
import sys
import time
import types

import jax
import jax.numpy as jnp
from absl import app, flags

from experiments import memory_ablation
from infini_jax import evaluate, report
from infini_jax.data.tokenizer import get_tokenizer

POSITIONS = ("start", "middle", "end")


def load_config(spec: str):
  path, _, arg = spec.partition(":")
  import importlib.util
  module_spec = importlib.util.spec_from_file_location("books_config", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg or None)


def check_layers(flag: str, layers, config) -> None:
  """`layers` must be layers of an Infini model: the two ablations below act on its memory."""
  if config.model.memory != "infini":
    raise ValueError(f"{flag}: model.memory={config.model.memory!r} has no memory read; use it "
                     "on an infini run")
  n = config.model.shape.num_layers
  if any(not 0 <= i < n for i in layers):
    raise ValueError(f"{flag}: the model has layers 0 to {n - 1}")


def empty_reads(model, config, layers: str) -> tuple[int, ...]:
  """Empties the memory reads of `layers` ("0,1"; "" leaves the model as trained) and returns
  them; a layer the model lacks, or a model without Infini memory, is an error."""
  try:
    off = tuple(int(x) for x in layers.split(",") if x.strip())
  except ValueError:
    raise ValueError(f"--empty_reads={layers}: give layer numbers, comma-separated") from None
  if off:
    check_layers(f"--empty_reads={layers}", off, config)
    memory_ablation.empty_reads(model, off)
  return off


def held(state, snapshot, layer: int):
  """The scan state with `layer`'s memory replaced by `snapshot` (that layer's M and z); the
  Infini stack is one stage of stacked layers, so a layer is an index of every memory leaf."""
  stage = state.layers[0]
  memory = jax.tree.map(lambda x, s: x.at[layer].set(s), stage.memory, snapshot)
  return state._replace(layers=(stage._replace(memory=memory),) + state.layers[1:])


class HeldScorer(evaluate.TeacherForced):
  """The teacher-forced scorer with one layer's memory held at its state after the first `after`
  tokens of each prompt (taken at the first chunk boundary at or past it)."""

  def __init__(self, model, chunk_segments: int, layer: int, after: int):
    super().__init__(model, chunk_segments)
    consume = self._consume

    def consume_held(params, state, tokens, mask):
      state = consume(params, state, tokens, mask)
      self.seen += tokens.shape[1]
      if self.seen >= after:
        if self.snapshot is None:  # a copy: the next call donates the state's buffers
          self.snapshot = jax.tree.map(lambda x: jnp.copy(x[layer]), state.layers[0].memory)
        else:
          state = held(state, self.snapshot, layer)
      return state

    self._consume = consume_held

  def __call__(self, rows, progress=None):
    self.seen, self.snapshot = 0, None
    return super().__call__(rows, progress)


def parse_hold(hold: str, config) -> tuple[int, int] | None:
  """'0:4096' -> (0, 4096); '' -> None."""
  if not hold:
    return None
  try:
    layer, after = (int(x) for x in hold.split(":"))
  except ValueError:
    raise ValueError(f"--hold={hold}: give LAYER:TOKENS, e.g. --hold=0:4096") from None
  check_layers(f"--hold={hold}", (layer,), config)
  if after < 1:
    raise ValueError(f"--hold={hold}: hold after at least 1 token")
  return layer, after


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  args = types.SimpleNamespace(config=_CONFIG.value, workdir=_WORKDIR.value,
                               lengths=_LENGTHS.value, positions=_POSITIONS.value,
                               samples=_SAMPLES.value, split=_SPLIT.value, out=_OUT.value,
                               empty_reads=_EMPTY_READS.value, hold=_HOLD.value)
  if (args.empty_reads or args.hold) and args.out.startswith("sweep"):
    raise ValueError(f"--out={args.out} with --empty_reads or --hold: books_compare reads "
                     "sweep*.json as the run as trained; name it apart, e.g. --out=hold.json")
  config = load_config(args.config)
  if config.data.get("passkey_filler") != "text":
    raise ValueError(f"{args.config} trains on repeated filler: this sweep is for book filler "
                     "(configs/passkey.py:...,filler=books or configs/books_passkey.py); "
                     "sweep repeated filler with eval.py")
  model, step = report.load_model(config, args.workdir)
  off = empty_reads(model, config, args.empty_reads)
  hold = parse_hold(args.hold, config)
  ev = evaluate.Passkey(config, lengths=args.lengths, positions=args.positions,
                        samples=args.samples, batch_size=1, chunk_segments=32, progress=False,
                        split=args.split)
  scorer = (HeldScorer(model, ev.chunk_segments, *hold) if hold else
            evaluate.TeacherForced(model, ev.chunk_segments))
  evaluate.check_vocab(get_tokenizer(config.data.tokenizer), model)
  out = dict(acc={}, digits={}, samples=args.samples, step=step, seconds={},
             filler_split=args.split, empty_reads=list(off),
             hold=list(hold or ()))
  path = os.path.join(args.workdir, args.out)
  for length in ev.lengths:
    for position in ev.positions:
      start = time.time()
      scores = ev._cell(scorer, length, position, lambda n: None)
      label = evaluate.length_label(length)
      out["acc"].setdefault(label, {})[position] = float(scores[:, 1].mean())
      out["digits"].setdefault(label, {})[position] = float(scores[:, 0].mean())
      out["seconds"].setdefault(label, {})[position] = round(time.time() - start, 1)
      print(f"{label} {position}: whole key {scores[:, 1].mean():.0%}, digits "
            f"{scores[:, 0].mean():.0%} ({args.samples} prompts, {time.time() - start:.0f} s)",
            flush=True)
      with open(path + ".tmp", "w") as f:
        json.dump(out, f, indent=1)
  os.replace(path + ".tmp", path)
  print("wrote", path)


def run(argv):
  try:
    main(argv)
  except (ValueError, FileNotFoundError) as e:
    sys.exit(f"error: {e}")


if __name__ == "__main__":
  # Flags only when run: the tests import empty_reads next to other modules that define --config.
  _CONFIG = flags.DEFINE_string("config", None, "configs/books_passkey.py:ARGS of the run.")
  _WORKDIR = flags.DEFINE_string("workdir", None, "The fine-tuned run's workdir.")
  _LENGTHS = flags.DEFINE_string("lengths", "4096,32768,131072", "Prompt lengths in tokens, "
                                 "comma-separated.")
  _POSITIONS = flags.DEFINE_string("positions", ",".join(POSITIONS), "Where the key sits: start, "
                                   "middle and/or end, comma-separated.")
  _SAMPLES = flags.DEFINE_integer("samples", 5, "Prompts per cell.")
  _SPLIT = flags.DEFINE_string("split", "test", "Whose books the filler comes from.")
  _OUT = flags.DEFINE_string("out", "sweep.json", "File name in WORKDIR for the accuracies.")
  _EMPTY_READS = flags.DEFINE_string("empty_reads", "", "Layers whose memory reads return 0, "
                                     "comma-separated (an Infini run); empty: as trained.")
  _HOLD = flags.DEFINE_string("hold", "", "LAYER:TOKENS: that layer's memory held at its state "
                              "after the first TOKENS tokens of each prompt; empty: as trained.")
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(run)
