"""Table 2 at laptop scale (configs/python_lm.py): every run of docs/RESULTS.md section 2 for each
seed, then the comparison (experiments/compare.py).

  python -m experiments.python_lm                                  # every run, seeds 0 1 2
  python -m experiments.python_lm --runs=xl,infini_linear --seeds=0,1
  python -m experiments.python_lm --runs_dir=runs/python_lm_all --steps=300 \
      --runs=infini_linear,infini_delta,local,xl,memorizing,rmt,full
  python -m experiments.python_lm --runs_dir=runs/python_lm_4k \
      --extra=memory=xl,token_shift=8,train_len=4096          # a run not in the list
  python -m experiments.python_lm --list                           # the runs and their arguments

Each run trains into RUNS_DIR/NAME/seedS (its log in train.log there). A finished run
(final_metrics.json) is skipped and an interrupted one resumes from its last checkpoint, so this
can be stopped and run again. Runs of one seed go one after another; one invocation per seed runs
seeds in parallel (pin each to its cores). The whole list at 1,500 steps is about 1,200
CPU-minutes, a seventh of them full attention's.

A run's name is its memory (Infini's with its rule), then its arguments in order: flags by name,
others as name_value (`name_of`), so that `--extra` runs are named as the list's are.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from typing import Callable

from absl import app, flags

from experiments import compare

# The options of the best Infini LM recipe (docs/RESULTS.md section 2), and the token shift that
# every memory may take, its weights started at 0.
BEST = dict(decay=True, xl_cache=True, gate_init=-3, memory_add=True)
SHIFT = dict(token_shift=8)
SHIFT_0 = dict(token_shift=8, shift_init=0)


def infini(**options) -> dict:
  return dict(memory="infini", rule="linear", **options)


# (run name, config arguments of configs/python_lm.py), in the order they run. Infini as
# published, local and XL; Infini's options one by one and together; XL and the best Infini with
# the token shift, its weights started at 1 and at 0; the paper's other baselines and Infini's
# delta rule; Memorizing Transformers with the shift; the XL/Infini pair on 32- and 16-byte
# segments, local and Memorizing on 16.
RUNS: list[tuple[str, dict]] = [
    ("infini_linear", infini()),
    ("local", dict(memory="local")),
    ("xl", dict(memory="xl")),
    ("infini_linear_write_gate", infini(write_gate=True)),
    ("infini_linear_decay", infini(decay=True)),
    ("infini_linear_xl_cache", infini(xl_cache=True)),
    ("infini_linear_decay_xl_cache", infini(decay=True, xl_cache=True)),
    ("infini_linear_gate_init_-3", infini(gate_init=-3)),
    ("infini_linear_decay_gate_init_-3", infini(decay=True, gate_init=-3)),
    ("infini_linear_decay_xl_cache_gate_init_-3", infini(decay=True, xl_cache=True, gate_init=-3)),
    ("infini_linear_query_gate", infini(query_gate=True)),
    ("infini_linear_decay_xl_cache_gate_init_-3_query_gate",
     infini(decay=True, xl_cache=True, gate_init=-3, query_gate=True)),
    ("infini_linear_decay_gate_init_-3_memory_add",
     infini(decay=True, gate_init=-3, memory_add=True)),
    ("infini_linear_decay_xl_cache_gate_init_-3_memory_add", infini(**BEST)),
    ("xl_token_shift_8", dict(memory="xl", **SHIFT)),
    ("infini_linear_decay_xl_cache_gate_init_-3_memory_add_token_shift_8_memory_scale",
     infini(**BEST, **SHIFT, memory_scale=True)),
    ("xl_token_shift_8_shift_init_0", dict(memory="xl", **SHIFT_0)),
    ("infini_linear_decay_xl_cache_gate_init_-3_memory_add_token_shift_8_memory_scale_shift_init_0",
     infini(**BEST, token_shift=8, memory_scale=True, shift_init=0)),
    ("infini_delta", dict(memory="infini", rule="delta")),
    ("memorizing", dict(memory="memorizing")),
    ("rmt", dict(memory="rmt")),
    ("full", dict(memory="full")),
    ("memorizing_token_shift_8_shift_init_0", dict(memory="memorizing", **SHIFT_0)),
    ("xl_token_shift_8_shift_init_0_segment_32", dict(memory="xl", **SHIFT_0, segment=32)),
    ("infini_linear_decay_xl_cache_gate_init_-3_memory_add_token_shift_8_memory_scale_shift_init_0"
     "_segment_32", infini(**BEST, token_shift=8, memory_scale=True, shift_init=0, segment=32)),
    ("xl_token_shift_8_shift_init_0_segment_16", dict(memory="xl", **SHIFT_0, segment=16)),
    ("infini_linear_decay_xl_cache_gate_init_-3_memory_add_token_shift_8_memory_scale_shift_init_0"
     "_segment_16", infini(**BEST, token_shift=8, memory_scale=True, shift_init=0, segment=16)),
    ("local_token_shift_8_shift_init_0_segment_16", dict(memory="local", **SHIFT_0, segment=16)),
    ("memorizing_token_shift_8_shift_init_0_segment_16",
     dict(memory="memorizing", **SHIFT_0, segment=16)),
]


def name_of(args: dict) -> str:
  """The run directory's name: the memory (infini_RULE for Infini), then each other argument in
  order, a flag as _NAME and a value as _NAME_VALUE (`infini_linear_decay_gate_init_-3`)."""
  name = args["memory"] + (f"_{args.get('rule', 'linear')}" if args["memory"] == "infini" else "")
  for key, value in args.items():
    if key not in ("memory", "rule"):
      name += f"_{key}" if value is True else f"_{key}_{value}"
  return name


def config_arg(args: dict, steps: int) -> str:
  """The configs/python_lm.py argument string of a run: memory, rule, steps, then the rest."""
  rest = {k: v for k, v in args.items() if k not in ("memory", "rule")}
  items = dict(memory=args["memory"], rule=args.get("rule", "linear"), steps=steps, **rest)
  return ",".join(f"{k}={'true' if v is True else v}" for k, v in items.items())


def parse_extra(arg: str) -> dict:
  """'memory=xl,token_shift=8,decay' -> {'memory': 'xl', 'token_shift': '8', 'decay': True}."""
  args = {}
  for item in filter(None, arg.split(",")):
    key, sep, value = item.partition("=")
    args[key] = value if sep and value.lower() != "true" else True
  if "memory" not in args:
    raise ValueError(f"--extra={arg!r} names no memory: start it with memory=...")
  return args


def select(names: list[str], extra: list[str]) -> list[tuple[str, dict]]:
  """The runs asked for: RUNS named in `names` (all of them when neither is given), then the
  `extra` argument strings, named by `name_of`."""
  known = dict(RUNS)
  unknown = [n for n in names if n not in known]
  if unknown:
    raise ValueError(f"unknown run {unknown[0]!r}: --list names the runs (or give a run's "
                     "arguments with --extra=memory=...,...)")
  runs = [(n, known[n]) for n in names] if names or extra else list(RUNS)
  return runs + [(name_of(args), args) for args in map(parse_extra, extra)]


def command(args: dict, steps: int, seed: int, workdir: str) -> list[str]:
  return [sys.executable, "train.py", f"--config=configs/python_lm.py:{config_arg(args, steps)}",
          f"--config.seed={seed}", f"--workdir={workdir}"]


def sweep(runs_dir: str, runs: list[tuple[str, dict]], seeds: list[int], steps: int,
          run: Callable = subprocess.run) -> list[str]:
  """Trains every run for every seed (seed-major) into RUNS_DIR/NAME/seedS, skipping finished
  ones (final_metrics.json); train.py resumes an interrupted one. Returns the workdirs trained.
  Raises RuntimeError naming the log of a run that fails."""
  trained = []
  for seed in seeds:
    for name, args in runs:
      workdir = os.path.join(runs_dir, name, f"seed{seed}")
      if os.path.exists(os.path.join(workdir, "final_metrics.json")):
        continue
      os.makedirs(workdir, exist_ok=True)
      print(f"{time.strftime('%H:%M:%S')} {name} seed {seed}", flush=True)
      log_path = os.path.join(workdir, "train.log")
      with open(log_path, "w") as log:
        done = run(command(args, steps, seed, workdir), stdout=log, stderr=subprocess.STDOUT)
      if done.returncode:
        raise RuntimeError(f"{name} seed {seed} failed (exit {done.returncode}): see {log_path}")
      trained.append(workdir)
  return trained


def _words(value: str) -> list[str]:
  return [w for w in re.split(r"[\s,]+", value or "") if w]


_RUNS_DIR = flags.DEFINE_string("runs_dir", "runs/python_lm", "Where the runs go: NAME/seedS.")
_STEPS = flags.DEFINE_integer("steps", 1500, "Training steps of every run.")
_SEEDS = flags.DEFINE_string("seeds", "0,1,2", "Seeds, comma- or space-separated.")
_NAMES = flags.DEFINE_string("runs", "", "Run names of the list, comma- or space-separated "
                             "(default: every run).")
_EXTRA = flags.DEFINE_multi_string("extra", [], "A run not in the list: its config arguments "
                                   "(memory=xl,token_shift=8); repeatable.")
_LIST = flags.DEFINE_bool("list", False, "Print the runs' names and config arguments; train "
                          "nothing.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  try:
    runs = select(_words(_NAMES.value), _EXTRA.value)
    seeds = [int(s) for s in _words(_SEEDS.value)]
  except ValueError as e:
    sys.exit(f"python_lm: error: {e}")
  if _LIST.value:
    for name, args in runs:
      print(name, config_arg(args, _STEPS.value))
    return
  try:
    sweep(_RUNS_DIR.value, runs, seeds, _STEPS.value)
  except RuntimeError as e:
    sys.exit(f"python_lm: error: {e}")
  compare.main([_RUNS_DIR.value])


if __name__ == "__main__":
  app.run(main)
