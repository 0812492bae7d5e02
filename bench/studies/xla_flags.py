"""XLA:CPU's library and codegen flags against the training step: does any close the MFU gap?

XLA:CPU hands dots to YNNPACK by default and can hand it (or XNNPACK, or oneDNN) more: elementwise
ops, reductions, whole subgraphs. These are XLA_FLAGS, read once when the backend starts, so each
variant runs in a fresh process (`--child`), and the variants alternate, round by round, keeping
each one's best step, so that load from other processes hits them alike.

Each child times bench/mfu.py's default workloads (the demo training step and the bench/layer.py
shape, remat `full`) and XLA's matmul peak (infini_jax.peak.PeakProbe). The figure is the speedup in
tokens/s over the default flags. MFU is given against the highest peak any child measured: a flag
that hands the probe's `a + i` to a library changes the probe too, so a child's own peak is no
fair denominator for it.

  python -m bench.studies.xla_flags          # writes bench/out/xla_flags.json
  python -m bench.studies.xla_flags --quick  # one round, the default and the YNNPACK variants
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from absl import app, flags

from bench import common
from infini_jax import peak as peaklib

YNN = "--xla_cpu_experimental_ynn_fusion_type="
VARIANTS = {
    "default": "",
    "ynn eltwise": YNN + "+eltwise",
    "ynn dot+eltwise+reduce": YNN + "+dot,+eltwise,+reduce",
    "ynn off (eigen dots)": YNN,
    "onednn": "--xla_cpu_use_onednn=true",
    "xnn graph greedy": "--xla_cpu_experimental_xnn_graph_fusion_mode=XNN_GRAPH_FUSION_MODE_GREEDY",
    "fast math": "--xla_cpu_enable_fast_math=true",
    "vector width 512": "--xla_cpu_prefer_vector_width=512",
}
QUICK = ("default", "ynn eltwise", "ynn dot+eltwise+reduce")
CHILD_CALLS = 2  # timed calls of each workload in one process (bench.mfu.measure's rounds)


def child() -> list[dict]:
  from bench import mfu  # imports jax: only here, after XLA_FLAGS is set
  rows = mfu.measure(mfu.QUICK, CHILD_CALLS)
  return [dict(name=r["name"], tokens_per_s=r["tokens_per_s"], peak_flops=r["best_peak_flops"],
               train_flops_per_token=r["train_flops_per_token"]) for r in rows]


def run_child(variant: str) -> list[dict]:
  flags = " ".join(f for f in (os.environ.get("XLA_FLAGS", ""), VARIANTS[variant]) if f)
  proc = subprocess.run([sys.executable, "-m", "bench.studies.xla_flags", "--child"],
                        env=dict(os.environ, XLA_FLAGS=flags), capture_output=True, text=True,
                        check=False)
  if proc.returncode:
    raise RuntimeError(f"bench.studies.xla_flags child {variant!r} failed:\n{proc.stderr[-3000:]}")
  return json.loads(proc.stdout.strip().splitlines()[-1])


def compare(variants, rounds: int) -> dict:
  best: dict[str, dict[str, dict]] = {v: {} for v in variants}
  for _ in range(rounds):
    for variant in variants:
      for r in run_child(variant):
        kept = best[variant].get(r["name"])
        if kept is None or r["tokens_per_s"] > kept["tokens_per_s"]:
          best[variant][r["name"]] = r
  peak = max(r["peak_flops"] for rows in best.values() for r in rows.values())
  rows = []
  for variant, by_name in best.items():
    for name, r in by_name.items():
      rows.append(dict(variant=variant, flags=VARIANTS[variant], workload=name,
                       tokens_per_s=r["tokens_per_s"], own_peak_flops=r["peak_flops"],
                       speedup=r["tokens_per_s"] / best["default"][name]["tokens_per_s"],
                       mfu=peaklib.mfu(r["tokens_per_s"], r["train_flops_per_token"], peak)))
  return dict(peak_flops=peak, rows=rows)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  args = flags.FLAGS
  if args.child:
    print(json.dumps(child()))
    return
  variants = QUICK if args.quick else tuple(VARIANTS)
  result = compare(variants, 1 if args.quick else args.rounds)
  for r in result["rows"]:
    print(f"{r['variant']:24s} {r['workload']:26s} {r['tokens_per_s']:7.0f} tok/s  "
          f"{r['speedup']:5.2f}x default  MFU {r['mfu']:.1%} (own peak "
          f"{r['own_peak_flops'] / 1e9:.0f} GFLOP/s)", flush=True)
  print(f"MFU against the highest peak of all children: {result['peak_flops'] / 1e9:.0f} GFLOP/s")
  print("wrote", common.write("xla_flags", result))


def define_flags():
  flags.DEFINE_bool("child", False, "Internal: time the workloads in this process.")
  flags.DEFINE_integer("rounds", 2, "Processes per variant.")
  flags.DEFINE_bool("quick", False, "One round, three variants.")


if __name__ == "__main__":
  define_flags()
  app.run(main)
