"""Compiles the exact training step for a TPU slice, on any machine, and reports XLA's plan.

  python -m infini_jax.aot --config=configs/pg19.py --topology=v5e:8x8 --out=runs/aot
  python -m infini_jax.aot --config=configs/passkey_1b.py:stage=pretrain --topology=v5e:4x4 \
      --config.mesh.data=1 --config.mesh.fsdp=16
  python -m infini_jax.aot --table=runs/aot --readme=README.md   # the README's table, from JSON
  python train.py --config=... --workdir=unused --dry_run --topology=v5e:4x4   # the same check

libtpu (`pip install -r requirements-tpu.txt`) compiles real TPU executables without a TPU: the
slice is described by `jax.experimental.topologies`, the step is `state.build(...).train_step`
traced under the config's mesh and sharding rules exactly as the trainer runs it, and
`.compile()` yields the program the slice would run. What it prints is XLA's, per chip: the bytes
of arguments, outputs and temporaries against the chip's HBM, the FLOPs and the collectives in
the optimized HLO. A step that does not fit fails in XLA with the bytes it needs; that is reported
as "does not fit: needs X GiB".
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import re
import sys
import time
from collections import Counter

import jax
import jax.numpy as jnp

from infini_jax import config as configlib
from infini_jax import sharding as sh
from infini_jax import state as statelib

# Slice names that compiled with libtpu 0.0.42.1 (STACK_NOTES.md); others that libtpu knows work.
TOPOLOGIES = ("v5e:2x2", "v5e:4x4", "v5e:8x8", "v5e:16x16", "v5p:2x2x4", "v5p:4x4x4", "v4:4x4x4",
              "v6e:8x8")

# The paper recipes and the slice each is meant for: `make aot` compiles every one.
RECIPES = (
    ("configs/pg19.py", "v5e:8x8"),
    ("configs/passkey_1b.py:stage=pretrain", "v5e:4x4"),
    ("configs/passkey_1b.py:stage=finetune", "v5e:4x4"),
    ("configs/booksum_8b.py:stage=pretrain", "v5e:16x16"),
    ("configs/booksum_8b.py:stage=pretrain", "v5p:4x4x4"),
    ("configs/booksum_8b.py:stage=finetune", "v5p:4x4x4"),
)

GiB = 2**30
# Published HBM per device, by device_kind, in bytes. The usable share (what XLA plans against)
# is probed from libtpu itself (`usable_hbm`); these are the figures a user reads in the docs.
HBM = {
    "TPU v5 lite": 16 * GiB,  # v5e: 16 GiB HBM2 per chip, cloud.google.com/tpu/docs/v5e
    "TPU v5": 95 * GiB,  # v5p: 95 GiB HBM2e per chip, cloud.google.com/tpu/docs/v5p
    # v4: 32 GiB per chip, cloud.google.com/tpu/docs/v4; libtpu's v4 topologies list each of a
    # chip's two TensorCores as a device, so a device has half (usable: 15.25 GiB, probed).
    "TPU v4": 16 * GiB,
    "TPU v6 lite": 32 * GiB,  # v6e (Trillium): 32 GiB HBM per chip, cloud.google.com/tpu/docs/v6e
}
COLLECTIVES = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all", "collective-permute")
_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def install_hint() -> str:
  return f'pip install -r requirements-tpu.txt  (or: pip install "jax[tpu]=={jax.__version__}")'


def _libtpu_installed() -> bool:
  return importlib.util.find_spec("libtpu") is not None


def topology(name: str):
  """The abstract TPU slice `name` (e.g. "v5e:8x8"): its `.devices` have kind and coordinates."""
  if not re.fullmatch(r"v[0-9][a-z]*:[0-9]+(x[0-9]+){1,2}", name):
    raise ValueError(f"unknown TPU topology {name!r}; use a name such as {', '.join(TOPOLOGIES)}")
  if not _libtpu_installed():
    raise ValueError(f"compiling for a TPU slice needs libtpu, which is not installed: "
                     f"{install_hint()}")
  # Compiling only: several processes may load libtpu at once (it is otherwise locked to one).
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  from jax.experimental import topologies  # noqa: PLC0415 (loads the TPU plugin on demand)
  try:
    with _quiet_stderr():  # libtpu warns that this machine is no TPU VM: true, and harmless here
      return topologies.get_topology_desc(topology_name=name, platform="tpu")
  except Exception as e:  # libtpu refuses names it does not know with a bare runtime error
    raise ValueError(f"unknown TPU topology {name!r} ({str(e).splitlines()[0][:120]}); use a name "
                     f"such as {', '.join(TOPOLOGIES)}") from None


@contextlib.contextmanager
def _quiet_stderr():
  """Silences what native code writes to the process's stderr (file descriptor 2) meanwhile."""
  sys.stderr.flush()
  saved = os.dup(2)
  with open(os.devnull, "w") as null:
    os.dup2(null.fileno(), 2)
    try:
      yield
    finally:
      os.dup2(saved, 2)
      os.close(saved)


def _size(number: str, unit: str) -> int:
  return int(float(number) * _UNITS[unit])


def usable_hbm(device) -> int | None:
  """The HBM XLA plans against on `device` (e.g. 15.75 GiB of a v5e's 16), from libtpu itself:
  a program that cannot fit is compiled, and its RESOURCE_EXHAUSTED message names the capacity."""
  mesh = jax.sharding.Mesh([device], ("x",))
  x = jax.ShapeDtypeStruct((2**38 // 4,), jnp.float32,  # 256 GiB: more than any chip has
                           sharding=jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
  try:
    jax.jit(lambda a: a + 1).lower(x).compile()
  except Exception as e:  # noqa: BLE001
    need = _needed(str(e))
    return need[1] if need else None
  return None


def _needed(message: str) -> tuple[int, int | None] | None:
  """(bytes needed, bytes available) from XLA's out-of-memory message, or None."""
  m = re.search(r"\(([\d.]+)([KMGT]?)\) exceeds available HBM \(([\d.]+)([KMGT]?)\)", message)
  if m:
    return _size(*m.group(1, 2)), _size(*m.group(3, 4))
  m = re.search(r"Used ([\d.]+)([KMGT]?) of ([\d.]+)([KMGT]?) hbm", message)
  if m:
    return _size(*m.group(1, 2)), _size(*m.group(3, 4))
  return None


# --- The optimized HLO: arrays and collectives. ---
_ARRAY = re.compile(r"\b(pred|[suf](?:8|16|32|64)|bf16|f8e\w+)\[([\d,]*)\](\{[^}]*\})?")
_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%(\S+) = (.*?) ([a-z][a-z0-9-]*)\((.*)$")


def arrays(shape_text: str) -> list[tuple[str, tuple[int, ...]]]:
  """`(f32[64,2]{1,0}, bf16[8])` -> [("f32", (64, 2)), ("bf16", (8,))]."""
  return [(m[1], tuple(int(d) for d in m[2].split(",") if d)) for m in _ARRAY.finditer(shape_text)]


def collectives(hlo: str) -> list[dict]:
  """Every collective in the optimized HLO as {op, form, arrays}: form "sync", "start" or "done".

  Asynchronous collectives appear as `all-gather-start`/`-done` pairs, as a generic `async-start`
  wrapping the op, or, in libtpu's HLO, as an op inside an `async-collective-start` fusion or an
  `async_collective_fusion` computation (the collective overlapped with the compute fused with
  it): each counts as a start. libtpu writes a reduce-scatter as an all-reduce fused with the
  slice each chip keeps, in a computation named `all-reduce-scatter`: that counts as a
  reduce-scatter. A collective inside a loop body is counted once (counts in the program text,
  not executions).
  """
  comps, current = {}, None
  for line in hlo.splitlines():
    head = re.match(r"^(?:ENTRY\s+)?%(\S+) .*\{\s*$", line)
    if head:
      current = comps.setdefault(head.group(1), [])
    elif line.startswith("}"):
      current = None
    elif current is not None:
      m = _INSTR.match(line)
      if m:
        current.append(m.groups())
  wrapped = set()
  for instrs in comps.values():
    for name, _, opcode, rest in instrs:
      if opcode == "async-start" or name.startswith("async-collective-start"):
        wrapped.update(re.findall(r"calls=%([\w.-]+)", rest))
  found = []
  for comp, instrs in comps.items():
    for name, shape, opcode, _ in instrs:
      op = next((c for c in COLLECTIVES if opcode in (c, c + "-start", c + "-done")), None)
      if op is None:
        continue
      if op == "all-reduce" and comp.startswith("all-reduce-scatter"):
        op, opcode = "reduce-scatter", opcode.replace("all-reduce", "reduce-scatter")
      asynchronous = comp in wrapped or comp.startswith("async_collective_fusion")
      form = opcode[len(op) + 1:] or ("start" if asynchronous else "sync")
      found.append(dict(op=op, form=form, arrays=arrays(shape)))
  return found


def collective_counts(hlo: str) -> dict[str, dict[str, int]]:
  counts = Counter((c["op"], c["form"]) for c in collectives(hlo))
  return {op: {f: counts[(op, f)] for f in ("sync", "start", "done")} for op in COLLECTIVES}


# --- The compile check. ---
def abstract_batch(config, setup) -> dict[str, jax.ShapeDtypeStruct]:
  """The global batch as the data pipeline yields it (pipeline.py): int32 token ids, a bool mask
  and float32 loss weights, each [batch_size, seq_len], split over the data axes."""
  dtypes = dict(inputs=jnp.int32, targets=jnp.int32, mask=jnp.bool_, weights=jnp.float32)
  shape = (config.batch_size, config.seq_len)
  return {k: jax.ShapeDtypeStruct(shape, dtypes[k], sharding=setup.batch_sharding)
          for k in statelib.BATCH_KEYS}


def compile_step(config, topology_name: str):
  """(report dict, compiled executable or None): the training step compiled for the slice."""
  topo = topology(topology_name)
  devices = list(topo.devices)
  try:
    data, fsdp, tensor = sh.mesh_shape(config.mesh, len(devices))
  except ValueError:
    m = config.mesh
    raise ValueError(
        f"mesh data={m.data} fsdp={m.fsdp} tensor={m.tensor} does not match {topology_name}'s "
        f"{len(devices)} chips: their product must be {len(devices)} (one axis may be -1), e.g. "
        f"--config.mesh.data=1 --config.mesh.fsdp=-1 --config.mesh.tensor=1") from None
  model_cfg = configlib.model_config(config)
  mesh = sh.make_mesh(config.mesh, devices=devices)
  setup = statelib.build(config, model_cfg, mesh)  # before the mesh: eval_shape needs no mesh
  batch = abstract_batch(config, setup)
  kind = devices[0].device_kind
  report = dict(
      topology=topology_name, chips=len(devices), device_kind=kind,
      mesh=dict(data=data, fsdp=fsdp, tensor=tensor), model=config.model_name,
      parameters=setup.num_params, batch_size=config.batch_size, seq_len=config.seq_len,
      hbm_bytes=HBM.get(kind), usable_hbm_bytes=usable_hbm(devices[0]),
      # What the model's matmuls need per chip (model.flops_per_token, x3 for the backward),
      # beside what XLA counts in the compiled program.
      model_flops_per_chip=3 * model_cfg.flops_per_token() * config.batch_size * config.seq_len
      / len(devices))
  start = time.perf_counter()
  with jax.set_mesh(mesh), sh.use_rules(setup.rules):  # as trainer.train_and_evaluate runs it
    lowered = setup.train_step.lower(setup.abstract_state, batch)
    report["trace_s"] = time.perf_counter() - start
    try:
      compiled = lowered.compile()
    except Exception as e:  # noqa: BLE001
      if "RESOURCE_EXHAUSTED" not in str(e):
        raise
      need, capacity = _needed(str(e)) or (None, None)  # None: a wording this does not know
      report.update(compile_s=time.perf_counter() - start, fits=False, total_bytes=need,
                    xla_error=str(e).strip().splitlines()[0][:300])
      report["usable_hbm_bytes"] = capacity or report["usable_hbm_bytes"]
      return report, None
  report["compile_s"] = time.perf_counter() - start
  mem = compiled.memory_analysis()
  figures = {k: int(getattr(mem, f"{k}_size_in_bytes"))
             for k in ("argument", "output", "temp", "alias", "generated_code")}
  report.update({f"{k}_bytes": v for k, v in figures.items()})
  # Donated state: outputs alias arguments, so the aliased bytes are held once.
  report["total_bytes"] = (figures["argument"] + figures["output"] - figures["alias"]
                           + figures["temp"])
  capacity = report["usable_hbm_bytes"] or report["hbm_bytes"]
  report["fits"] = capacity is None or report["total_bytes"] <= capacity
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  report["xla_flops_per_chip"] = float(cost.get("flops", 0.0)) if cost else None
  report["collectives"] = collective_counts(compiled.as_text())
  return report, compiled


def _gib(b) -> str:
  return "?" if b is None else f"{b / GiB:.2f} GiB"


def _size_text(b) -> str:
  return f"{b / 2**20:.2f} MiB" if b < GiB else f"{b / GiB:.3f} GiB"


def summary(report: dict) -> str:
  """The report as a few readable lines."""
  capacity = report.get("usable_hbm_bytes") or report.get("hbm_bytes")
  mesh = " ".join(f"{k}={v}" for k, v in report["mesh"].items())
  head = (f"{report['model']} on {report['topology']} ({report['chips']} x "
          f"{report['device_kind']}, mesh {mesh}), batch {report['batch_size']} x "
          f"{report['seq_len']} tokens; compiled in {report['compile_s']:.1f} s")
  if not report["fits"]:
    line = (f"{head}\n  does not fit: needs {_gib(report['total_bytes'])} of {_gib(capacity)} "
            "per chip")
    return line if report["total_bytes"] else f"{line}\n  XLA: {report.get('xla_error')}"
  lines = [head, "  per chip:"]
  for k in ("argument", "output", "alias", "temp"):
    lines.append(f"    {k:<12}{_size_text(report[f'{k}_bytes']):>14}")
  share = "" if not capacity else f"  ({100 * report['total_bytes'] / capacity:.0f}%)"
  lines.append(f"    {'total':<12}{_size_text(report['total_bytes']):>14} of {_gib(capacity)} "
               f"usable HBM ({_gib(report['hbm_bytes'])} published){share}")
  # XLA's cost analysis counts a loop's body once (the segment scan, the micro-batch scan).
  lines.append(f"  FLOPs per chip: XLA {report['xla_flops_per_chip']:.3e} (loop bodies once), "
               f"model {report['model_flops_per_chip']:.3e} (the whole step)")
  lines.append("  collectives (sync / async start):")
  for op, n in report["collectives"].items():
    lines.append(f"    {op:<20}{n['sync']:>6} /{n['start']:>5}")
  return "\n".join(lines)


def report_name(recipe: str, topology_name: str) -> str:
  """"configs/passkey_1b.py:stage=pretrain", "v5e:4x4" -> "passkey_1b_stage=pretrain_v5e_4x4";
  overrides after the config (--config.x=y) add a short hash of themselves."""
  config, *overrides = recipe.split(" ")
  name = os.path.basename(config).replace(".py", "") + "_" + topology_name
  if overrides:
    name += "_" + hashlib.sha1(" ".join(overrides).encode()).hexdigest()[:8]
  return re.sub(r"[^\w=.-]+", "_", name)


def run(config, topology_name: str, recipe: str = "", out: str = "") -> dict:
  """Compiles, prints the summary, and writes `<out>/<name>.json` and `.hlo.txt` when out is set."""
  report, compiled = compile_step(config, topology_name)
  report["recipe"] = recipe or config.model_name
  print(summary(report), flush=True)
  if out:
    os.makedirs(out, exist_ok=True)
    name = report_name(report["recipe"], topology_name)
    with open(os.path.join(out, name + ".json"), "w") as f:
      json.dump(report, f, indent=2)
    if compiled is not None:
      with open(os.path.join(out, name + ".hlo.txt"), "w") as f:
        f.write(compiled.as_text())
    print(f"  wrote {os.path.join(out, name)}.json", flush=True)
  return report


# --- The README table. ---
BEGIN, END = "<!-- aot:begin -->", "<!-- aot:end -->"


def table(directory: str) -> str:
  """A markdown table of every report in `directory`, the paper recipes first in RECIPES order."""
  reports = []
  for fname in sorted(os.listdir(directory)):
    if fname.endswith(".json"):
      with open(os.path.join(directory, fname)) as f:
        reports.append(json.load(f))
  order = {r: i for i, r in enumerate(RECIPES)}
  reports.sort(key=lambda r: (order.get((r["recipe"], r["topology"]), len(order)), r["recipe"]))
  rows = ["| recipe | slice | mesh (data, fsdp, tensor) | per chip (XLA) | usable HBM | compile |",
          "|---|---|---|---|---|---|"]
  for r in reports:
    capacity = r.get("usable_hbm_bytes") or r.get("hbm_bytes")
    need = (f"{_gib(r['total_bytes'])} ({100 * r['total_bytes'] / capacity:.0f}%)"
            if r["fits"] and capacity else f"does not fit: needs {_gib(r['total_bytes'])}")
    mesh = ", ".join(str(r["mesh"][a]) for a in sh.MESH_AXES)
    rows.append(f"| `{r['recipe']}` | `{r['topology']}` | {mesh} | {need} | {_gib(capacity)} | "
                f"{r['compile_s']:.0f} s |")
  return "\n".join(rows)


def update_readme(readme: str, directory: str) -> None:
  with open(readme) as f:
    text = f.read()
  if BEGIN not in text or END not in text:
    raise ValueError(f"{readme} has no {BEGIN} ... {END} markers to put the table between")
  head, rest = text.split(BEGIN, 1)
  _, tail = rest.split(END, 1)
  with open(readme, "w") as f:
    f.write(f"{head}{BEGIN}\n{table(directory)}\n{END}{tail}")


def recipe_name(config_flag) -> str:
  """The config file[:args] a config flag was given, and its --config.x=y overrides."""
  from ml_collections import config_flags  # noqa: PLC0415
  overrides = [a for a in sys.argv[1:] if a.startswith("--config.")]
  return " ".join([config_flags.get_config_filename(config_flag), *overrides])


def check(config, topology_name: str, recipe: str = "", out: str = "") -> int:
  """The command's exit status: 0 fits, 1 does not fit, 2 refused (with a one-line message)."""
  try:
    return 0 if run(config, topology_name, recipe, out)["fits"] else 1
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2


def _main():
  from absl import app, flags, logging  # noqa: PLC0415
  from ml_collections import config_flags  # noqa: PLC0415

  # Defined here, not at import: train.py imports this module and has flags of its own.
  config = config_flags.DEFINE_config_file("config", None, "Experiment config file[:args].",
                                           lock_config=True)
  topo = flags.DEFINE_string("topology", "", f"TPU slice, e.g. one of {', '.join(TOPOLOGIES)}.")
  out = flags.DEFINE_string("out", "", "Directory for <name>.json and <name>.hlo.txt.")
  tab = flags.DEFINE_string("table", "", "Print (or with --readme, write) the table of the "
                            "reports in this directory, and exit.")
  readme = flags.DEFINE_string("readme", "", "With --table: the file whose aot markers get it.")
  recipes = flags.DEFINE_bool("recipes", False, "Print the paper recipes and their slices "
                              "(config and topology, one pair a line), and exit.")

  def main(argv):
    if len(argv) > 1:
      raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)  # jax logs at INFO that this machine has no TPU
    if recipes.value:
      print("\n".join(f"{c} {t}" for c, t in RECIPES))
    elif tab.value:
      update_readme(readme.value, tab.value) if readme.value else print(table(tab.value))
    elif config.value is None or not topo.value:
      print("error: give --config=CONFIG[:ARGS] and --topology=SLICE (e.g. v5e:4x4)",
            file=sys.stderr)
      sys.exit(2)
    else:
      sys.exit(check(config.value, topo.value, recipe_name(flags.FLAGS["config"]), out.value))

  app.run(main)


if __name__ == "__main__":
  _main()
