"""The cost curve of context: training time per token against sequence length, per memory.

The real training step (infini_jax.state.build: forward, backward through the segment scan with
remat, AdamW update), batch 1, random tokens, for the `tiny` and `demo` presets at 512 ... 64K
tokens with the memories
  infini   segments of the preset's length, a compressive memory carried between them
  xl       segments, each also attending to the previous segment's keys and values
  local    segments, no memory
  full     one segment as long as the sequence: ordinary causal attention (quadratic)
Every step of a preset is compiled first, then all are timed round-robin (best of `--rounds`)
so that 8K and 64K, or full and infini, are measured side by side. `full` stops where XLA's
compiled memory plan (or its quadratic extrapolation from the previous length) exceeds the budget
(16 GiB, or 60% of the machine's free memory if less), and by default after 8K (`--full_max`:
tiny's 16K plans 11 GiB and takes a minute a step, too long for `make bench`). 512 and 1K are
there to find where full attention becomes slower per token than Infini-attention (the
crossover).

Targets: Infini's time per token at 64K within 1.2x of its time per token at 8K (linear cost);
full's time per token grows with the length.

  python -m bench.scaling            # writes bench/out/scaling.json and scaling.png
  python -m bench.scaling --quick    # demo only, 2K, 8K, 64K (a few minutes)
"""

from __future__ import annotations

import math
import time

import jax
from absl import app, flags

from bench import common

PRESETS = ("tiny", "demo")
MEMORIES = ("infini", "xl", "local", "full")
LENGTHS = (512, 1024, 2048, 4096, 8192, 16384, 32768, 65536)
QUICK_LENGTHS = (2048, 8192, 65536)
SHORT_ONLY = ("infini", "full")  # 512 and 1K only locate the crossover of these two
LONG_S = 5.0
COLORS = {"infini": "tab:blue", "xl": "tab:orange", "local": "tab:green", "full": "tab:red"}


def sweep(preset: str, lengths, memories, budget: float, rounds: int, full_max: int
          ) -> list[dict]:
  rows, steps, warm = [], {}, {}
  for memory in memories:
    previous = None  # (length, planned bytes) of the last full-attention step
    for length in lengths:
      if length < 2048 and memory not in SHORT_ONLY:
        continue
      row = dict(preset=preset, memory=memory, length=length)
      rows.append(row)
      if memory == "full" and length > full_max:
        row.update(skipped=f"longer than --full_max={full_max}")
        continue
      if memory == "full" and previous is not None:
        guess = previous[1] * (length / previous[0]) ** 2  # the T x T probabilities dominate
        if guess > budget:
          row.update(skipped=f"planned ~{guess / 2**30:.1f} GiB (extrapolated) > budget "
                             f"{budget / 2**30:.1f} GiB")
          continue
      start = time.perf_counter()
      step = common.TrainStep(preset, length, memory=memory)
      row.update(compile_s=round(time.perf_counter() - start, 1), planned_bytes=step.planned_bytes,
                 segment=step.model_cfg.shape.segment_len)
      if step.planned_bytes > budget:
        row.update(skipped=f"planned {step.planned_bytes / 2**30:.1f} GiB > budget "
                           f"{budget / 2**30:.1f} GiB")
        continue
      step.allocate()
      start = time.perf_counter()
      jax.block_until_ready(step())  # warm-up: first touch of the buffers
      warm[(memory, length)] = time.perf_counter() - start
      if memory == "full":
        previous = (length, step.planned_bytes)
      steps[(memory, length)] = step
      print(f"  {preset} {memory:6s} {length:6d}: compiled in {row['compile_s']:.0f} s, "
            f"plan {step.planned_bytes / 2**20:.0f} MiB, first step {warm[(memory, length)]:.1f} s",
            flush=True)
  # Round-robin over every step; steps of over LONG_S seconds (whose one-off costs are a small
  # part of their time) count their warm-up as a candidate and get one round fewer.
  best = common.interleaved(steps, 1)
  short = {k: s for k, s in steps.items() if warm[k] < LONG_S}
  for k, t in common.interleaved(short, rounds - 1).items():
    best[k] = min(best[k], t)
  for k in steps.keys() - short.keys():
    best[k] = min(best[k], warm[k])
  for row in rows:
    key = (row["memory"], row["length"])
    if key in best:
      t = best[key]
      row.update(step_s=t, us_per_token=t / row["length"] * 1e6, tokens_per_s=row["length"] / t)
  for step in steps.values():
    step.release()
  return rows


def crossover(rows: list[dict]) -> dict:
  """Where full attention becomes slower per token than Infini-attention."""
  per = {(r["memory"], r["length"]): r.get("us_per_token") for r in rows}
  lengths = sorted({r["length"] for r in rows})
  both = [L for L in lengths if per.get(("full", L)) and per.get(("infini", L))]
  if not both:
    return dict(note="full and infini were not both measured at any length")
  ratio = {L: per[("full", L)] / per[("infini", L)] for L in both}
  slower = [L for L in both if ratio[L] > 1]
  out = dict(full_over_infini=ratio)
  if not slower:
    out["note"] = f"full was faster per token up to {both[-1]}"
  elif slower[0] == both[0]:
    out.update(length=slower[0], note=f"full is already slower per token at {both[0]} tokens, "
                                      "the shortest length measured")
  else:
    lo = max(L for L in both if L < slower[0])
    hi = slower[0]
    # Interpolate log(ratio) linearly in log(length) between the bracketing lengths.
    a, b = math.log(ratio[lo]), math.log(ratio[hi])
    at = math.exp(math.log(lo) + (math.log(hi) - math.log(lo)) * (-a) / (b - a))
    out.update(length=round(at), bracket=(lo, hi),
               note=f"full becomes slower per token than infini at about {at:.0f} tokens")
  return out


def summarise(rows: list[dict]) -> dict:
  out = {}
  for preset in sorted({r["preset"] for r in rows}):
    mine = [r for r in rows if r["preset"] == preset]
    per = {(r["memory"], r["length"]): r.get("us_per_token") for r in mine}
    s = dict(crossover=crossover(mine))
    if per.get(("infini", 65536)) and per.get(("infini", 8192)):
      s["infini_64k_over_8k"] = per[("infini", 65536)] / per[("infini", 8192)]
      s["infini_linear_target"] = 1.2
      s["infini_meets_target"] = s["infini_64k_over_8k"] <= 1.2
    full = sorted(L for (m, L), v in per.items() if m == "full" and v)
    if len(full) >= 2:
      s["full_per_token_growth"] = {f"{L}/{full[0]}": per[("full", L)] / per[("full", full[0])]
                                    for L in full[1:]}
      s["full_longest_measured"] = full[-1]
    out[preset] = s
  return out


def plot(rows: list[dict], path: str) -> None:
  plt = common.pyplot()
  presets = sorted({r["preset"] for r in rows}, key=PRESETS.index)
  fig, axes = plt.subplots(1, len(presets), figsize=(5.2 * len(presets), 3.8), squeeze=False)
  for ax, preset in zip(axes[0], presets):
    for memory in MEMORIES:
      pts = sorted((r["length"], r["us_per_token"]) for r in rows
                   if r["preset"] == preset and r["memory"] == memory and "us_per_token" in r)
      if not pts:
        continue
      ax.plot(*zip(*pts), "o-", color=COLORS[memory], label=memory)
      skipped = [r for r in rows if r["preset"] == preset and r["memory"] == memory
                 and "skipped" in r]
      if skipped:
        why = ("over the\nmemory budget" if "GiB" in skipped[0]["skipped"] else
               "not run\n(--full_max)")
        ax.axvline(skipped[0]["length"], color=COLORS[memory], ls=":", lw=1)
        ax.text(skipped[0]["length"], 0.55, f"{memory}: {why}", fontsize=7, ha="left",
                color=COLORS[memory], transform=ax.get_xaxis_transform())
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("sequence length (tokens)")
    ax.set_ylabel("training time per token (µs)")
    ax.set_title(f"{preset}: forward + backward + AdamW, batch 1")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  args = flags.FLAGS
  presets = ["demo"] if args.quick else args.presets.split(",")
  lengths = QUICK_LENGTHS if args.quick else tuple(int(x) for x in args.lengths.split(","))
  budget = min(args.budget_gib * 2**30, 0.6 * common.available_bytes())
  rows = []
  for preset in presets:
    print(f"{preset}: compiling {len(lengths)} lengths x {args.memories}", flush=True)
    rows += sweep(preset, lengths, args.memories.split(","), budget, args.rounds, args.full_max)
  summary = summarise(rows)
  header = " ".join(f"{L // 1024}K".rjust(8) if L >= 1024 else f"{L:8d}" for L in lengths)
  print(f"{'preset':6s} {'memory':7s} {header}   µs per token")
  for preset in presets:
    for memory in args.memories.split(","):
      cells = []
      for L in lengths:
        r = next((r for r in rows
                  if (r["preset"], r["memory"], r["length"]) == (preset, memory, L)), {})
        cells.append(f"{r['us_per_token']:8.1f}" if "us_per_token" in r else "       -")
      print(f"{preset:6s} {memory:7s} " + " ".join(cells))
  for preset, s in summary.items():
    if "infini_64k_over_8k" in s:
      print(f"{preset}: infini time/token 64K / 8K = {s['infini_64k_over_8k']:.3f} (target <= 1.2)")
    if "full_per_token_growth" in s:
      print(f"{preset}: full time/token growth " + ", ".join(
          f"{k} {v:.2f}x" for k, v in s["full_per_token_growth"].items()))
    print(f"{preset}: crossover: {s['crossover'].get('note')}")
  path = common.write("scaling", dict(budget_bytes=budget, rounds=args.rounds, batch=1,
                                      summary=summary, rows=rows))
  plot(rows, common.out_path("scaling.png"))
  print("wrote", path, "and scaling.png")


def define_flags():
  flags.DEFINE_bool("quick", False, "The demo preset only, at 2K, 8K and 64K tokens.")
  flags.DEFINE_string("presets", ",".join(PRESETS), "Comma-separated model presets to time.")
  flags.DEFINE_string("memories", ",".join(MEMORIES), "Comma-separated memories to time.")
  flags.DEFINE_string("lengths", ",".join(map(str, LENGTHS)), "Comma-separated sequence lengths.")
  flags.DEFINE_integer("rounds", 3, "Timed round-robin passes; the best one counts.")
  flags.DEFINE_float("budget_gib", 16.0, "Largest compiled program to run, in GiB.")
  flags.DEFINE_integer("full_max", 8192, "Longest full-attention length (65536: until the memory "
                       "budget).")


if __name__ == "__main__":
  define_flags()
  app.run(main)
