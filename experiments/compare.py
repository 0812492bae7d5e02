"""The comparison table of a set of runs: held-out perplexity by memory, mean ± std over seeds.

  python -m experiments.compare runs/python_lm      # RUNS/NAME/seedN/{config,final_metrics}.json
  python -m experiments.compare runs/python_lm xl_token_shift_8   # and gaps against that run

Prints a Markdown table (overall perplexity and by segment position, parameters, state size)
and the gates of the infini runs per layer, and writes RUNS/compare.md and RUNS/compare.png.
With a reference run named, also each run's gap to it seed by seed: runs of one seed share the
initialisation's random draws and the order of the training windows, so the per-seed gap
separates the memories from how a seed's training went, which the spread across seeds mixes in.
"""

from __future__ import annotations

import glob
import json
import os
import sys

import jax
import numpy as np
from absl import app
from flax import nnx

from infini_jax.model import InfiniTransformer, ModelConfig


def load(runs: str) -> dict[str, list[dict]]:
  """name -> one dict per finished seed: its final metrics and its model config."""
  out = {}
  for path in sorted(glob.glob(os.path.join(runs, "*", "seed*", "final_metrics.json"))):
    run = os.path.dirname(path)
    with open(path) as f:
      metrics = json.load(f)
    with open(os.path.join(run, "config.json")) as f:  # flat for a run of an earlier version
      model = ModelConfig.from_dict(json.load(f)["model"])
    out.setdefault(os.path.basename(os.path.dirname(run)), []).append(
        dict(metrics=metrics, model=model, seed=os.path.basename(run)[len("seed"):]))
  return out


def sizes(model: ModelConfig) -> tuple[int, int]:
  """(parameters, state numbers per sequence) of a model config."""
  built = InfiniTransformer(model, rngs=nnx.Rngs(0))  # small: built for real
  params = sum(x.size for x in jax.tree.leaves(nnx.state(built, nnx.Param)))
  return params, built.state_size(1)


def mean_std(values) -> str:
  values = np.asarray(values, np.float64)
  return f"{values.mean():.3f} ± {values.std(ddof=1) if len(values) > 1 else 0:.3f}"


def cell(value: float) -> str:
  return "–" if np.isnan(value) else f"{value:.3f}"  # "–": the run has no such position


def table(results: dict[str, list[dict]], evaluator: str) -> tuple[str, list[str]]:
  """A markdown table of `evaluator`'s perplexity per memory (mean ± std over seeds, by segment
  position), best first, and the position buckets it has."""
  ppl = f"eval/{evaluator}/ppl"
  buckets = sorted({k[len(ppl) + 5:] for seeds in results.values() for s in seeds
                    for k in s["metrics"] if k.startswith(ppl + "_seg_")},
                   key=lambda b: int(b.split("-")[0]))
  head = ["memory", "seeds", "ppl (mean ± std)"] + [f"seg {b}" for b in buckets] + [
      "params", "state / seq"]
  rows = []
  results = {n: seeds for n, seeds in results.items() if all(ppl in s["metrics"] for s in seeds)}
  order = sorted(results, key=lambda n: np.mean([s["metrics"][ppl] for s in results[n]]))
  for name in order:
    seeds = results[name]
    params, state = sizes(seeds[0]["model"])
    rows.append([name, str(len(seeds)), mean_std([s["metrics"][ppl] for s in seeds])] + [
        cell(np.mean([s['metrics'].get(f'{ppl}_seg_{b}', np.nan) for s in seeds]))
        for b in buckets] + [f"{params / 1e6:.3f}M", f"{state:,}"])
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  lines += ["| " + " | ".join(r) + " |" for r in rows]
  return "\n".join(lines), buckets


def paired(results: dict[str, list[dict]], evaluator: str, reference: str) -> str:
  """A markdown table of each run's perplexity minus `reference`'s, over the seeds both have."""
  ppl = f"eval/{evaluator}/ppl"
  ref = {s["seed"]: s["metrics"][ppl] for s in results[reference] if ppl in s["metrics"]}
  ref_spread = np.std(list(ref.values()), ddof=1) if len(ref) > 1 else np.nan
  lines = [f"| memory | seeds | minus {reference}, per seed | mean ± std | below in | "
           f"mean / {reference}'s spread across seeds ({ref_spread:.3f}) |", "|---|---|---|---|---|---|"]
  for name, seeds in sorted(results.items()):
    gaps = {s["seed"]: s["metrics"][ppl] - ref[s["seed"]] for s in seeds
            if s["seed"] in ref and ppl in s["metrics"]}
    if name == reference or not gaps:
      continue
    order = sorted(gaps, key=int)
    g = np.array([gaps[k] for k in order])
    lines.append(f"| {name} | {', '.join(order)} | {', '.join(f'{x:+.3f}' for x in g)} | "
                 f"{mean_std(g)} | {(g < 0).sum()} of {len(g)} | "
                 f"{g.mean() / ref_spread:+.2f} |")
  return "\n".join(lines)


def gates(results: dict[str, list[dict]]) -> str:
  """sigmoid(β) per layer of every infini run: quartiles, and heads near 0 / 1."""
  lines = []
  for name, seeds in sorted(results.items()):
    for s in seeds:
      g = {k: v for k, v in s["metrics"].items() if k.startswith("eval/gates/gate/")}
      if not g:
        continue
      layers = sorted({k.split("/")[3] for k in g})
      for layer in layers:
        vals = np.array([v for k, v in g.items() if k.split("/")[3] == layer])
        q = np.percentile(vals, [0, 50, 100])
        lines.append(f"| {name} | {s['seed']} | {layer} | {q[0]:.3f} / {q[1]:.3f} / {q[2]:.3f} | "
                     f"{(vals < 0.1).sum()} | {(vals > 0.9).sum()} | {len(vals)} |")
  if not lines:
    return ""
  head = ("| run | seed | layer | sigmoid(β) min / median / max | heads < 0.1 (local) | "
          "heads > 0.9 (memory) | heads |\n|---|---|---|---|---|---|---|\n")
  return head + "\n".join(lines)


def plot(results, evaluator, buckets, path):
  """Perplexity against the token position where each segment bucket starts (log scale), so that
  runs with different segment lengths (full: one window) line up."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(7, 4))
  ppl = f"eval/{evaluator}/ppl"
  for name, seeds in sorted(results.items()):
    seg = seeds[0]["model"].shape.segment_len
    if ppl not in seeds[0]["metrics"]:
      continue
    have = [b for b in buckets if f"{ppl}_seg_{b}" in seeds[0]["metrics"]]
    x = [(int(b.split("-")[0]) - 1) * seg + seg / 2 for b in have]  # first segment's middle
    y = np.array([[s["metrics"][f"{ppl}_seg_{b}"] for b in have] for s in seeds])
    ax.errorbar(x, y.mean(0), yerr=y.std(0), label=f"{name} (segment {seg})", marker="o",
                capsize=2)
  ax.set_xscale("log", base=2)
  ax.set_xlabel("token position in the held-out file (where the segment bucket starts)")
  ax.set_ylabel("perplexity (bytes)")
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)


def main(argv):
  """argv: RUNS_DIR [REFERENCE_RUN] (the program's name already dropped)."""
  if len(argv) not in (1, 2):
    raise app.UsageError("usage: python -m experiments.compare RUNS_DIR [REFERENCE_RUN]")
  runs, reference = argv[0], (argv[1:] or [None])[0]
  results = load(runs)
  if not results:
    sys.exit(f"no finished runs (NAME/seedN/final_metrics.json) under {runs}")
  if reference is not None and reference not in results:
    sys.exit(f"no finished run {reference!r} under {runs}; it has {sorted(results)}")
  tables, plots = [], []
  # Every perplexity evaluator the runs have (configs/python_lm.py: perplexity, at the trained
  # length, and perplexity_long, streamed far beyond it).
  evaluators = sorted({k.split("/")[1] for seeds in results.values() for s in seeds
                       for k in s["metrics"] if k.startswith("eval/") and k.endswith("/ppl")})
  for evaluator in evaluators:
    text, buckets = table(results, evaluator)
    tables.append(f"{evaluator}:\n\n{text}")
    if reference is not None:
      tables.append(f"{evaluator}, seed by seed against {reference}:\n\n"
                    + paired(results, evaluator, reference))
    plots.append((evaluator, buckets))
  g = gates(results)
  report = "\n\n".join(tables) + ("\n\n" + g if g else "") + "\n"
  print(report)
  with open(os.path.join(runs, "compare.md"), "w") as f:
    f.write(report)
  for evaluator, buckets in plots:
    plot(results, evaluator, buckets, os.path.join(runs, f"compare_{evaluator}.png"))
  print("wrote", os.path.join(runs, "compare.md"), "and", ", ".join(
      f"compare_{evaluator}.png" for evaluator, _ in plots))


if __name__ == "__main__":
  app.run(lambda argv: main(argv[1:]))
