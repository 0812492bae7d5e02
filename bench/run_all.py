"""`make bench`: every benchmark in bench/, one after the other, JSON and plots in one folder.

The finished studies in bench/studies/ are not run (bench/studies/README.md).

Each benchmark runs in its own process (so one's memory never weighs on the next) with
BENCH_OUT pointing at the output folder (bench/out, or $BENCH_OUT). At the end the headline
figures are read back from the JSON files and printed, and run_all.json records what ran, how
long it took and whether it failed. About 30 minutes on 2 idle CPU cores (more when other jobs
share them); `--quick` about 10.

  python -m bench.run_all                      # everything
  python -m bench.run_all --quick              # smaller sweeps
  python -m bench.run_all --only=scaling,layer
  BENCH_OUT=/tmp/b python -m bench.run_all

gpu_1b runs only where JAX sees a GPU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from absl import app, flags

from bench import common

# name -> whether it takes --quick. Cheap and independent first; the long sweeps last.
BENCHES = {
    "state_bytes": False,
    "layer": False,
    "mfu": True,
    "stream": False,
    "data": False,
    "scaling": True,
    "gpu_1b": True,
}


def headlines(out: str) -> list[str]:
  """One line per figure the README quotes, from the JSON files in `out`."""

  def load(name):
    path = os.path.join(out, f"{name}.json")
    if not os.path.exists(path):
      return None
    with open(path) as f:
      return json.load(f)

  lines = []
  if s := load("scaling"):
    for preset, p in s["summary"].items():
      if "infini_64k_over_8k" in p:
        lines.append(f"scaling/{preset}: infini time per token 64K/8K = "
                     f"{p['infini_64k_over_8k']:.3f} (target <= 1.2)")
      if "full_per_token_growth" in p:
        lines.append(f"scaling/{preset}: full time per token growth " + ", ".join(
            f"{k} {v:.1f}x" for k, v in p["full_per_token_growth"].items()))
      lines.append(f"scaling/{preset}: {p['crossover'].get('note')}")
  if m := load("mfu"):
    for r in m["rows"]:
      lines.append(f"mfu: {r['name']}: {r['mfu']:.1%} of {r['peak_flops'] / 1e9:.0f} GFLOP/s "
                   f"(peak spread {r['peak_spread']:.0%})")
  if layer := load("layer"):
    for r in layer["rows"]:
      lines.append(f"layer: {r['name']}: {r['train_tokens_per_s']:.0f} tok/s fwd+bwd, MFU "
                   f"{r['train_mfu']:.1%}")
  if sb := load("state_bytes"):
    for preset, c in sb["curves"].items():
      last = c["rows"][-1]
      lines.append(f"state_bytes/{preset}: state {c['state_bytes'] / 2**20:.2f} MiB vs KV cache "
                   f"{last['kv_cache_bytes'] / 2**30:.0f} GiB at 1M: {last['ratio']:,.0f}x")
    infini = sb["paper_lm_table2"]["infini"]
    lines.append(f"state_bytes/paper_lm: infini {infini['numbers'] / 1e6:.2f}M numbers, "
                 f"{infini['compression_vs_memorizing']:.0f}x smaller than Memorizing "
                 "Transformers (paper: 114x)")
  if st := load("stream"):
    lines.append(f"stream: eval peak RSS 1M/32K = {st['eval_peak_rss_ratio_1m_over_32k']:.2f} "
                 f"(target <= 1.1), time per generated token 1M/1K = "
                 f"{st['time_per_token_ratio_1m_over_1k']:.2f} (target <= 1.2)")
  if d := load("data"):
    lines.append(f"data: {d['tokens_per_s']:,} tokens/s, {d['ratio_to_training']}x training")
  if g := load("gpu_1b"):
    mfu = f"{g['mfu']:.1%}" if g.get("mfu") is not None else "n/a"
    lines.append(f"gpu_1b: {g['device_kind']}: {g['tokens_per_s']:,.0f} tokens/s, MFU {mfu}")
  return lines


def has_gpu() -> bool:
  proc = subprocess.run([sys.executable, "-c", "import jax; print(jax.default_backend())"],
                        capture_output=True, text=True, check=False)
  return proc.stdout.strip() == "gpu"


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  args = flags.FLAGS
  names = args.only.split(",") if args.only else list(BENCHES)
  unknown = set(names) - set(BENCHES)
  if unknown:
    raise app.UsageError(f"unknown benchmarks {sorted(unknown)}; choose from {list(BENCHES)}")
  if "gpu_1b" in names and not has_gpu():
    print("gpu_1b: skipped (no GPU; `python -m bench.gpu_1b --smoke` checks it on a CPU)")
    names.remove("gpu_1b")
  out = os.path.abspath(common.OUT_DIR)
  os.makedirs(out, exist_ok=True)
  env = dict(os.environ, BENCH_OUT=out)
  runs, start_all = [], time.perf_counter()
  for name in names:
    cmd = [sys.executable, "-m", f"bench.{name}"] + (["--quick"] if args.quick and BENCHES[name]
                                                      else [])
    print(f"\n=== {' '.join(cmd[1:])}", flush=True)
    start = time.perf_counter()
    rc = subprocess.run(cmd, env=env, check=False).returncode
    runs.append(dict(name=name, command=" ".join(cmd[1:]), rc=rc,
                     seconds=round(time.perf_counter() - start, 1)))
    status = "ok" if rc == 0 else f"FAILED (exit {rc})"
    print(f"=== {name}: {status} in {runs[-1]['seconds']:.0f} s", flush=True)
  total = time.perf_counter() - start_all
  with open(os.path.join(out, "run_all.json"), "w") as f:
    json.dump(dict(quick=args.quick, total_seconds=round(total), runs=runs), f, indent=2)
  print(f"\n=== headline figures ({out}, {total / 60:.1f} min)")
  for line in headlines(out):
    print(line)
  failed = [r["name"] for r in runs if r["rc"]]
  if failed:
    sys.exit(f"failed: {', '.join(failed)}")


def define_flags():
  flags.DEFINE_bool("quick", False, "Pass --quick to the benchmarks that take it.")
  flags.DEFINE_string("only", "", "Comma-separated subset of " + ",".join(BENCHES) + ".")


if __name__ == "__main__":
  define_flags()
  app.run(main)
