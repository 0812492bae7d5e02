"""Where a training step's time goes: the JAX profiler's per-op times, by HLO op and by the model
code that produced it, for one or more batch sizes side by side.

Traces `--steps` real training steps (bench.common.TrainStep: forward, backward, AdamW) of a
preset, then sums the duration of every XLA op the profiler recorded: on a GPU the device's
"XLA Ops" line, on a CPU the XLA worker threads (thread time: ops on two threads both count).
Each op is named three ways:
  op      the HLO instruction (copy_bitcast_fusion.35, dot.1072, ...), from the trace; each
          batch size is compiled apart and numbers its ops its own way, so this table is the
          first batch size's only;
  kind    the op without its number (copy_bitcast_fusion): the line to read first, since a
          large share of copies, transposes or converts is time spent moving data, not computing;
  source  the jax operation it came from (the compiled HLO's metadata op_name, e.g.
          ".../checkpoint/BTD,DF->BTF/dot_general"), shortened to its last parts.
With several batch sizes (`--batches=1,2`) every row shows each size's time per step and their
ratio: a row that grows faster than the batch is what makes a larger batch slower per token.

  python -m bench.studies.profile                                   # demo preset on this CPU
  python -m bench.studies.profile --preset=1b --seq_len=32768 --batches=1,2 --attention_impl=xla \
      --steps=2                                             # the 1b GPU question (bench.gpu_1b)
Writes bench/out/profile_PRESET.json.
"""

from __future__ import annotations

import collections
import glob
import re
import tempfile

import jax
from absl import app, flags

from bench import common

_METADATA = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = .*?op_name=\"([^\"]*)\"")


def op_sources(hlo_text: str) -> dict[str, str]:
  """HLO instruction name -> the jax op_name in its metadata, for every instruction that has one
  (fusions carry the op_name of the operation they were built around)."""
  out = {}
  for line in hlo_text.splitlines():
    m = _METADATA.match(line)
    if m:
      out.setdefault(m.group(1), m.group(2))
  return out


def short_source(op_name: str, parts: int = 3) -> str:
  """The last `parts` path components of an op_name, jit(...) wrappers dropped."""
  pieces = [p for p in op_name.split("/") if p and not p.startswith("jit(")]
  return "/".join(pieces[-parts:]) or op_name


def op_times(xplane_path: str) -> collections.Counter:
  """Total nanoseconds per XLA op name in a trace (device "XLA Ops" lines, else CPU XLA threads)."""
  data = jax.profiler.ProfileData.from_file(xplane_path)
  lines = [line for plane in data.planes for line in plane.lines if line.name == "XLA Ops"]
  if not lines:  # CPU: the thunk executor's threads; their outer "ThunkExecutor" spans nest ops
    lines = [line for plane in data.planes if plane.name.startswith("/host:CPU")
             for line in plane.lines if line.name.startswith("tf_XLA")]
  times = collections.Counter()
  for line in lines:
    for event in line.events:
      if event.name.startswith(("ThunkExecutor", "end: ")):
        continue
      times[event.name] += event.duration_ns
  if not times:
    found = {plane.name: [line.name for line in plane.lines] for plane in data.planes}
    raise RuntimeError(f"no XLA op events in {xplane_path}; its planes and lines: {found}")
  return times


def profile(preset: str, seq_len: int, batch: int, steps: int, **overrides) -> dict:
  """Per-op nanoseconds per step of `steps` traced steps after two warm-up steps."""
  step = common.TrainStep(preset, seq_len, batch=batch, **overrides).allocate()
  for _ in range(2):
    jax.block_until_ready(step())
  with tempfile.TemporaryDirectory() as trace_dir:
    with jax.profiler.trace(trace_dir):
      for _ in range(steps):
        metrics = step()
      jax.block_until_ready(metrics)
    (path,) = glob.glob(f"{trace_dir}/**/*.xplane.pb", recursive=True)
    times = op_times(path)
  sources = op_sources(step.compiled.as_text())
  step.release()
  return {op: dict(ns_per_step=ns / steps, op=op, kind=re.sub(r"\.\d+$", "", op),
                   source=short_source(sources.get(op, "?"))) for op, ns in times.items()}


def table(per_batch: dict[int, dict], key: str, top: int) -> list[dict]:
  """Rows grouped by `key` ("op", "kind" or "source"), largest first by the first batch's time."""
  batches = list(per_batch)
  grouped = {b: collections.Counter() for b in batches}
  for b, ops in per_batch.items():
    for row in ops.values():
      grouped[b][row[key]] += row["ns_per_step"]
  first = grouped[batches[0]]
  total = {b: sum(g.values()) for b, g in grouped.items()}
  rows = []
  for name, _ in first.most_common(top):
    row = {key: name}
    for b in batches:
      row[f"ms_batch{b}"] = grouped[b][name] / 1e6
      row[f"share_batch{b}"] = grouped[b][name] / max(total[b], 1)
    if len(batches) > 1:
      row["ratio"] = grouped[batches[-1]][name] / max(first[name], 1)
    rows.append(row)
  return rows


def print_table(title: str, rows: list[dict], batches: list[int]) -> None:
  key = next(iter(rows[0])) if rows else "op"
  print(f"\n{title}")
  head = "  ".join(f"{'batch ' + str(b):>16s}" for b in batches)
  print(f"{head}  {'ratio' if len(batches) > 1 else '':>6s}  {key}")
  for r in rows:
    cells = "  ".join(f"{r[f'ms_batch{b}']:8.1f} ms {r[f'share_batch{b}']:5.1%}" for b in batches)
    ratio = f"{r['ratio']:6.2f}" if "ratio" in r else ""
    print(f"{cells}  {ratio:>6s}  {r[key][:110]}")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  args = flags.FLAGS
  batches = [int(b) for b in args.batches.split(",")]
  if not batches or min(batches) < 1:
    raise app.UsageError(f"--batches must be positive integers, e.g. 1,2; got {args.batches!r}")
  overrides = {k: getattr(args, k) for k in ("attention_impl", "remat", "dtype")
               if getattr(args, k) is not None}
  per_batch = {b: profile(args.preset, args.seq_len, b, args.steps, **overrides) for b in batches}
  result = dict(preset=args.preset, seq_len=args.seq_len, batches=batches, steps=args.steps,
                overrides=overrides,
                total_ms={b: sum(r["ns_per_step"] for r in ops.values()) / 1e6
                          for b, ops in per_batch.items()})
  print(f"{args.preset}, {args.seq_len} tokens, {overrides or 'preset settings'}; op time per "
        "step: " + ", ".join(f"batch {b} {ms:.1f} ms" for b, ms in result["total_ms"].items()))
  for key in ("kind", "source", "op"):
    shown = {batches[0]: per_batch[batches[0]]} if key == "op" else per_batch
    result[f"by_{key}"] = table(shown, key, args.top)
    print_table(f"by {key}", result[f"by_{key}"], list(shown))
  print("\nwrote", common.write(f"profile_{args.preset}", result))


def define_flags():
  flags.DEFINE_string("preset", "demo", "Model preset to profile.")
  flags.DEFINE_integer("seq_len", 512, "Tokens per sequence.")
  flags.DEFINE_string("batches", "8", "Comma-separated batch sizes, e.g. 1,2, profiled side by "
                      "side.")
  flags.DEFINE_integer("steps", 3, "Traced steps per batch size.")
  flags.DEFINE_integer("top", 20, "Rows per table.")
  flags.DEFINE_enum("attention_impl", None, ["blocked", "xla"], "Override the preset's attention.")
  flags.DEFINE_enum("remat", None, ["full", "dots", "none"], "Override the preset's remat.")
  flags.DEFINE_enum("dtype", None, ["float32", "bfloat16"], "Override the preset's compute dtype.")


if __name__ == "__main__":
  define_flags()
  app.run(main)
