"""The book tables: streamed perplexity by context position with seed spread, the Infini-minus-
baseline gaps seed by seed, the Infini runs' gates, and the passkey-in-books sweep.

  python -m experiments.books_compare runs/books     # RUNS/lm/NAME/seedN, RUNS/passkey/NAME/seedN

Writes RUNS/books.md. "Below by more than the spread" means: Infini's perplexity minus the
baseline's, per seed, has a mean below zero by more than the larger of the two runs' standard
deviations across seeds (and with one seed, no verdict).
"""

from __future__ import annotations

import glob
import json
import os
import sys

import numpy as np
from absl import app

from experiments import compare

EVALUATORS = {"perplexity": "validation book (As You Like It, 61K tokens)",
              "perplexity_long": "test book (Paradise Lost, 220K tokens)"}


def ms(values) -> str:
  v = np.asarray(values, np.float64)
  return f"{v.mean():.2f} ± {v.std(ddof=1):.2f}" if len(v) > 1 else f"{v.mean():.2f}"


def position_table(results: dict, evaluator: str) -> str:
  """Perplexity per memory, overall and per segment bucket: mean ± std over seeds."""
  ppl = f"eval/{evaluator}/ppl"
  results = {n: s for n, s in results.items() if all(ppl in x["metrics"] for x in s)}
  buckets = sorted({k[len(ppl) + 5:] for seeds in results.values() for s in seeds
                    for k in s["metrics"] if k.startswith(ppl + "_seg_")},
                   key=lambda b: int(b.split("-")[0]))
  head = ["memory", "seeds", "all"] + [f"seg {b}" for b in buckets] + ["params", "state / seq"]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for name in sorted(results, key=lambda n: np.mean([s["metrics"][ppl] for s in results[n]])):
    seeds = results[name]
    row = [name, ",".join(sorted(s["seed"] for s in seeds)), ms([s["metrics"][ppl] for s in seeds])]
    row += [ms([s["metrics"].get(f"{ppl}_seg_{b}", np.nan) for s in seeds]) for b in buckets]
    params, state = compare.sizes(seeds[0]["model"])
    row += [f"{params / 1e6:.3f}M", f"{state:,}"]
    lines.append("| " + " | ".join(row) + " |")
  return "\n".join(lines)


def verdicts(results: dict, evaluator: str) -> str:
  """Each Infini run against each baseline: per-seed gaps, mean ± std, and the verdict."""
  ppl = f"eval/{evaluator}/ppl"
  per_seed = {n: {s["seed"]: s["metrics"][ppl] for s in seeds if ppl in s["metrics"]}
              for n, seeds in results.items()}
  lines = ["| Infini | baseline | seeds | Infini minus baseline, per seed | mean | spread "
           "(larger std) | below in | below by more than the spread? |",
           "|---|---|---|---|---|---|---|---|"]
  for infini in sorted(n for n in per_seed if n.startswith("infini")):
    for base in sorted(n for n in per_seed if not n.startswith("infini")):
      common = sorted(set(per_seed[infini]) & set(per_seed[base]), key=int)
      if not common:
        continue
      gaps = np.array([per_seed[infini][k] - per_seed[base][k] for k in common])
      spread = max(np.std(list(per_seed[infini].values()), ddof=1) if len(per_seed[infini]) > 1
                   else np.nan,
                   np.std(list(per_seed[base].values()), ddof=1) if len(per_seed[base]) > 1
                   else np.nan)
      if len(common) < 2 or np.isnan(spread):
        verdict = "one seed: no verdict"
      elif gaps.mean() < -spread:
        verdict = "yes"
      else:
        verdict = "no" + (" (below, within the spread)" if gaps.mean() < 0 else " (above)")
      lines.append(f"| {infini} | {base} | {','.join(common)} | "
                   f"{', '.join(f'{g:+.2f}' for g in gaps)} | {gaps.mean():+.2f} | "
                   f"{spread:.2f} | {(gaps < 0).sum()} of {len(gaps)} | {verdict} |")
  return "\n".join(lines)


def _tokens(label: str) -> int:
  """'32K' -> 32768, '448' -> 448: a sweep's length label back to tokens, for sorting."""
  scale = {"K": 2**10, "M": 2**20}.get(label[-1], 1)
  return int(label[:-1] if scale > 1 else label) * scale


def passkey_table(runs: str) -> str:
  """Whole-key accuracy (digits) per length and key position of every passkey run: the cells
  of its sweep*.json files together, shortest prompt first."""
  cells = {}  # run name -> {length label: (acc by position, digits by position, samples)}
  for path in sorted(glob.glob(os.path.join(runs, "passkey", "*", "seed*", "sweep*.json"))):
    with open(path) as f:
      sweep = json.load(f)
    run = os.path.dirname(path)
    name = f"{os.path.basename(os.path.dirname(run))} {os.path.basename(run)}"
    for length, acc in sweep["acc"].items():
      cells.setdefault(name, {})[length] = (acc, sweep["digits"][length], sweep["samples"])
  rows = []
  for name, lengths in cells.items():
    for length in sorted(lengths, key=_tokens):
      acc, digits, samples = lengths[length]
      row = [f"{100 * acc[p]:.0f}% ({100 * digits[p]:.0f}%)" if p in acc else "–"
             for p in ("start", "middle", "end")]
      rows.append([name, length] + row + [str(samples)])
  if not rows:
    return ""
  lines = ["| run | prompt length | start: whole key (digits) | middle | end | prompts per cell |",
           "|---|---|---|---|---|---|"]
  return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def main(argv):
  argv = argv[1:]  # absl passes the program name first
  if len(argv) != 1:
    raise app.UsageError("usage: python -m experiments.books_compare RUNS_DIR")
  runs = argv[0]
  results = compare.load(os.path.join(runs, "lm")) if os.path.isdir(
      os.path.join(runs, "lm")) else {}
  parts = []
  for evaluator, what in EVALUATORS.items():
    if any(f"eval/{evaluator}/ppl" in s["metrics"] for seeds in results.values() for s in seeds):
      parts.append(f"Streamed perplexity on the {what}, by segment of 64 tokens (mean ± std over "
                   f"seeds):\n\n{position_table(results, evaluator)}")
      parts.append(f"Infini against the baselines on the {what}:\n\n"
                   f"{verdicts(results, evaluator)}")
  g = compare.gates(results)
  if g:  # whether the memory is read at all: a gate near 0 is local attention alone
    parts.append("The Infini runs' gates, sigmoid(β) per layer:\n\n" + g)
  pk = passkey_table(runs)
  if pk:
    parts.append("Passkey with book filler (held-out book), whole key right:\n\n" + pk)
  if not parts:
    sys.exit(f"no finished runs under {runs}/lm or {runs}/passkey")
  report = "\n\n".join(parts) + "\n"
  print(report)
  with open(os.path.join(runs, "books.md"), "w") as f:
    f.write(report)
  print("wrote", os.path.join(runs, "books.md"))


if __name__ == "__main__":
  app.run(main)
