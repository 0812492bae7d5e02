"""glibc malloc settings against the default: the layer bench, the demo step, full attention.

XLA's CPU runtime allocates its large temporaries with malloc. With glibc's defaults a buffer of
more than 32 MiB (the dynamic mmap threshold) is a fresh mmap: its pages fault in on first touch
and are unmapped on free, so every step pays the kernel for zeroed pages (sys time). Variants:
  default   glibc's defaults
  heap      MALLOC_MMAP_THRESHOLD_=4294967296 (heap, not mmap, below 4 GiB),
            MALLOC_TRIM_THRESHOLD_=68719476736 (never return the heap's top),
            MALLOC_TOP_PAD_=1073741824 (grow it 1 GiB at a time)
  tuned     heap + MALLOC_ARENA_MAX=1 (common.MALLOC_ENV). XLA's worker threads allocate from
            per-thread arenas, whose large requests are mmapped whatever the threshold; with one
            arena the heap settings above apply to them too.
Each measurement is a fresh process (glibc reads these variables once, at start-up); the variants
alternate and each keeps its best wall time, so that load from other processes hits them alike.
CPU seconds per step (user + sys) are reported too: they move less with other processes' load.
Workloads: `layer` (bench/layer.py: Infini-attention, segment 1024, remat, fwd+bwd), `demo` (the
demo model's training step, batch 8 x 512), `full` (bench/layer.py's full causal attention over
8192 tokens: GiB-sized temporaries).

  python -m bench.studies.malloc             # writes bench/out/malloc.json and malloc.png
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time

import jax
from absl import app, flags

from bench import common

WORKLOADS = ("layer", "demo", "full")


def child(workload: str, steps: int) -> dict:
  """One workload in this process: best step time, and CPU seconds per step (user, sys)."""
  if workload in ("layer", "full"):
    import jax.numpy as jnp
    from flax import nnx

    from bench import layer

    memory, segment, remat = (("infini", layer.T, "full") if workload == "layer" else
                              ("local", layer.L, "none"))
    m = layer.make_layer(memory)
    params, run = layer.scanned(m, segment, remat)
    x = jax.random.normal(jax.random.key(1), (layer.B, layer.L, layer.D))
    f = jax.jit(jax.value_and_grad(lambda p, x: jnp.sum(run(p, x) ** 2), argnums=(0, 1)))
    fn, tokens = (lambda: f(params, x)), layer.B * layer.L
  else:
    step = common.TrainStep("demo", 512, batch=8).allocate()
    fn, tokens = step, step.tokens
  jax.block_until_ready(fn())
  r0, best = resource.getrusage(resource.RUSAGE_SELF), float("inf")
  for _ in range(steps):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    best = min(best, time.perf_counter() - start)
  r1 = resource.getrusage(resource.RUSAGE_SELF)
  return dict(step_s=best, tokens_per_s=tokens / best,
              user_s_per_step=(r1.ru_utime - r0.ru_utime) / steps,
              sys_s_per_step=(r1.ru_stime - r0.ru_stime) / steps,
              minor_faults_per_step=(r1.ru_minflt - r0.ru_minflt) / steps,
              peak_rss_bytes=r1.ru_maxrss * 1024)  # Linux reports KiB


VARIANTS = {
    "default": {},
    "heap": {k: v for k, v in common.MALLOC_ENV.items() if k != "MALLOC_ARENA_MAX"},
    "tuned": common.MALLOC_ENV,
}


def run_child(workload: str, variant: str, steps: int) -> dict:
  env = {k: v for k, v in os.environ.items() if k not in common.MALLOC_ENV}
  env.update(VARIANTS[variant])
  proc = subprocess.run([sys.executable, "-m", "bench.studies.malloc", "--child", workload,
                         f"--steps={steps}"], env=env, capture_output=True, text=True, check=False)
  if proc.returncode:
    raise RuntimeError(f"bench.studies.malloc child {workload} failed:\n{proc.stderr[-3000:]}")
  return json.loads(proc.stdout.strip().splitlines()[-1])


def compare(workload: str, rounds: int, steps: int) -> dict:
  best = {}
  for _ in range(rounds):
    for variant in VARIANTS:
      r = run_child(workload, variant, steps)
      r["cpu_s_per_step"] = r["user_s_per_step"] + r["sys_s_per_step"]
      if variant not in best or r["step_s"] < best[variant]["step_s"]:
        best[variant] = r
  d, t = best["default"], best["tuned"]
  return dict(workload=workload, **best, speedup=d["step_s"] / t["step_s"],
              cpu_ratio=d["cpu_s_per_step"] / t["cpu_s_per_step"],
              heap_only_speedup=d["step_s"] / best["heap"]["step_s"])


def plot(rows: list[dict], path: str) -> None:
  plt = common.pyplot()
  fig, ax = plt.subplots(figsize=(7, 3.6))
  colors = {"default": "tab:gray", "heap": "tab:orange", "tuned": "tab:blue"}
  ticks, labels, x = [], [], 0.0
  for r in rows:
    for variant, color in colors.items():
      d = r[variant]
      ax.bar(x, d["user_s_per_step"], color=color)
      ax.bar(x, d["sys_s_per_step"], bottom=d["user_s_per_step"], color=color, alpha=0.35,
             hatch="//")
      ax.text(x, d["cpu_s_per_step"], f"{d['step_s']:.2f}s\n{d['peak_rss_bytes'] / 2**30:.1f}G",
              ha="center", va="bottom", fontsize=7)
      ticks.append(x)
      labels.append(f"{r['workload']}\n{variant}")
      x += 1
    x += 0.6
  ax.set_xticks(ticks, labels, fontsize=7)
  ax.set_ylabel("CPU s per step (user; sys hatched)")
  ax.set_title("glibc malloc settings; above each bar: best step, peak RSS")
  fig.tight_layout()
  fig.savefig(path, dpi=120)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  args = flags.FLAGS
  if args.child:
    print(json.dumps(child(args.child, args.steps)))
    return
  rounds = 1 if args.quick else args.rounds
  rows = [compare(w, rounds, args.steps) for w in WORKLOADS]
  for r in rows:
    cells = "  ".join(f"{v} {r[v]['step_s']:.2f} s (user {r[v]['user_s_per_step']:.2f} + sys "
                      f"{r[v]['sys_s_per_step']:.2f})" for v in VARIANTS)
    print(f"{r['workload']:6s} {cells}  -> tuned {r['speedup']:.2f}x wall, {r['cpu_ratio']:.2f}x "
          f"less CPU (heap only: {r['heap_only_speedup']:.2f}x wall)")
  path = common.write("malloc", dict(variants=VARIANTS, steps=args.steps, rounds=rounds, rows=rows))
  plot(rows, common.out_path("malloc.png"))
  print("wrote", path, "and malloc.png")


def define_flags():
  flags.DEFINE_enum("child", None, list(WORKLOADS), "Internal: time one workload in this process.")
  flags.DEFINE_integer("steps", 3, "Timed steps per process.")
  flags.DEFINE_integer("rounds", 1, "Processes per variant and workload.")
  flags.DEFINE_bool("quick", False, "One round.")


if __name__ == "__main__":
  define_flags()
  app.run(main)
