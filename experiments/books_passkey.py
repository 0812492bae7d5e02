"""The passkey sweep with book filler: whole-key accuracy by prompt length and key position, the
filler drawn from the held-out (test) books, the model of a training run's checkpoint.

  python -m experiments.books_passkey --config=configs/books_passkey.py:memory=infini \
      --workdir=runs/books/passkey/infini/seed0 --lengths=4096,32768,131072 --samples=5

Scoring is the passkey evaluator's (infini_jax/evaluate.py: teacher-forced greedy digits, the
state carried through the whole prompt); only the prompts differ. Writes WORKDIR/sweep.json
({"acc": {length: {position: fraction}}, "digits": ..., "samples", "step", "seconds"}) after
every cell, so an interrupted sweep keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

from infini_jax import evaluate, report
from infini_jax.data import passkey
from infini_jax.data.tokenizer import get_tokenizer

POSITIONS = ("start", "middle", "end")


class BookPasskey(evaluate.Passkey):
  """The passkey evaluator with prompts whose filler is text from `split`'s files."""

  def __init__(self, config, filler_glob: str, split: str = "test", **kwargs):
    super().__init__(config, **kwargs)
    self.filler_glob, self.split = filler_glob, split

  def _cell(self, scorer, length, position, progress) -> np.ndarray:
    prompts = passkey.passkey_prompts(length, position, self.samples, self.tokenizer,
                                      digits=self.digits, seed=self.seed, split=self.split,
                                      filler="text", filler_glob=self.filler_glob)
    scores = []
    for ids, answer in prompts:
      reply = self.tokenizer.encode_array(" " + answer)
      predicted = scorer([(ids, reply)], progress)[:1]
      scores.append(evaluate.score_passkey(self.tokenizer.decode(predicted[0]), answer))
    return np.array(scores, np.float64)


def load_config(spec: str):
  path, _, arg = spec.partition(":")
  import importlib.util
  module_spec = importlib.util.spec_from_file_location("books_config", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg or None)


def main(argv=None):
  parser = argparse.ArgumentParser(prog="python -m experiments.books_passkey",
                                   description=__doc__.split("\n\n")[0])
  parser.add_argument("--config", required=True, help="configs/books_passkey.py:ARGS of the run")
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--lengths", default="4096,32768,131072")
  parser.add_argument("--positions", default=",".join(POSITIONS))
  parser.add_argument("--samples", type=int, default=5)
  parser.add_argument("--split", default="test", help="whose books the filler comes from")
  parser.add_argument("--out", default="sweep.json", help="file name in WORKDIR")
  args = parser.parse_args(argv)
  config = load_config(args.config)
  model, step = report.load_model(config, args.workdir)
  ev = BookPasskey(config, config.data.passkey_filler_glob, args.split,
                   lengths=args.lengths, positions=args.positions, samples=args.samples,
                   batch_size=1, chunk_segments=32, progress=False)
  scorer = evaluate.TeacherForced(model, ev.chunk_segments)
  evaluate.check_vocab(get_tokenizer(config.data.tokenizer), model)
  out = dict(acc={}, digits={}, samples=args.samples, step=step, seconds={},
             filler_split=args.split)
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


if __name__ == "__main__":
  try:
    main()
  except (ValueError, FileNotFoundError) as e:
    sys.exit(f"error: {e}")
