"""The compile check for TPU slices (infini_jax/aot.py), on this CPU with libtpu: the tiny model
compiled for a v5e:2x2 slice fits a bound from its shapes, the dry run's bytes are the compiled
program's, the collectives say how gradients are reduced, and bad input is refused in one line."""

import importlib
import json
import math
import os
import re
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest
from flax import nnx
from jax.sharding import AbstractMesh, AxisType

from infini_jax import aot, dry_run, optim
from infini_jax import state as statelib
from infini_jax import config as configlib
from infini_jax import sharding as sh
from infini_jax.model import InfiniTransformer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ITEMSIZE = dict(pred=1, s8=1, u8=1, bf16=2, f16=2, s32=4, u32=4, f32=4, s64=8, u64=8, f64=8)


def tiny_config(data, fsdp, tensor):
  c = configlib.defaults("tiny")  # 2 layers, 4 heads (2 kv) of 16, segment 64, bytes
  # d_model 256 (not tiny's 64): at 64 XLA merges the small gradients into one all-reduce
  # rather than reduce-scatter them, a choice it does not make at real sizes.
  c.model.shape.update(d_model=256, mlp_dim=768)  # no shard the size of an activation
  c.seq_len = 2 * c.model.shape.segment_len
  c.batch_size = 8
  c.mesh = ml_collections.ConfigDict(dict(data=data, fsdp=fsdp, tensor=tensor))
  return c


@pytest.fixture(scope="module")
def compiled():
  """{mesh: (config, report, optimized HLO)} for fsdp x tensor and for pure data parallelism."""
  out = {}
  for mesh in [(1, 2, 2), (4, 1, 1)]:
    config = tiny_config(*mesh)
    report, exe = aot.compile_step(config, "v5e:2x2")
    out[mesh] = config, report, exe.as_text()
  return out


def entry_parameters(hlo):
  """[(dtype, per-chip dims, layout)] of the compiled program's arguments."""
  entry = hlo[hlo.index("\nENTRY"):]
  entry = entry[:entry.index("\n}")]
  return [(m[1], tuple(int(d) for d in m[2].split(",") if d), m[3] or "")
          for m in re.finditer(r"= (\w+)\[([\d,]*)\](\{[^}]*\})? parameter\(", entry)]


def tiled_bytes(dtype, dims, layout):
  """Bytes of an array in TPU memory: its minor dimensions padded to the layout's tile, T(8,128)."""
  m = re.match(r"\{([\d,]*)(?::T\(([\d,]+)\))?", layout)
  order = [int(x) for x in m[1].split(",") if x] if m else []
  padded = [dims[i] for i in reversed(order)] if order else list(dims)
  padded = padded or [1]
  tile = [int(x) for x in m[2].split(",")] if m and m[2] else []
  for k, t in enumerate(reversed(tile)):
    if k < len(padded):
      padded[-1 - k] = -(-padded[-1 - k] // t) * t
  return math.prod(padded) * ITEMSIZE[dtype]


def test_dry_run_bytes_are_the_compiled_arguments(compiled):
  config, report, hlo = compiled[(1, 2, 2)]
  r = dry_run.estimate(config, configlib.model_config(config), device_count=4)
  params = entry_parameters(hlo)
  # The compiled arguments are the state (params, optimizer state, an int32 step) and the batch's
  # share of this chip: [8 / fsdp 2, 128] int32 inputs and targets, bool mask, float32 weights.
  batch = (8 // 2) * config.seq_len * (4 + 4 + 1 + 4)
  exact = sum(math.prod(d) * ITEMSIZE[t] for t, d, _ in params)
  assert exact == r["param_bytes"] + r["optimizer_bytes"] + 4 + batch
  # XLA's argument size is the same arrays, each padded to its TPU tile.
  assert sum(tiled_bytes(*p) for p in params) == report["argument_bytes"]


def state_shards(config):
  """The per-chip shape of every array of the train state (parameters, optimizer state, step)
  under the config's mesh and rules, from shapes alone."""
  mesh = AbstractMesh(tuple(config.mesh[a] for a in sh.MESH_AXES), sh.MESH_AXES,
                      axis_types=(AxisType.Auto,) * 3)
  model = nnx.eval_shape(lambda: InfiniTransformer(configlib.model_config(config),
                                                   rngs=nnx.Rngs(0)))
  variables = nnx.split(model)[1]
  params = nnx.to_pure_dict(variables)
  param_sh = sh.param_shardings(variables, mesh, sh.check_rules(config.sharding_rules))
  tx, _ = optim.make(config.optimizer, config.train.steps, optim.param_labels(model))
  opt = jax.eval_shape(tx.init, params)
  opt_sh = statelib.opt_state_shardings(opt, params, param_sh, mesh)
  return [d.shard_shape(x.shape) for x, d in zip(
      jax.tree.leaves((params, opt)), jax.tree.leaves((param_sh, opt_sh)))] + [()]


def tile_bound(shape):
  """Bytes an array of 4-byte (or smaller) elements can take in TPU memory, whatever its layout:
  its two minor dimensions padded to an (8, 128) tile, the worst pair of dimensions taken as
  minor; a scalar or vector fills at most one 1024-element tile row."""
  if len(shape) < 2:
    return 4 * (math.prod(shape) + 1023)
  return max(4 * math.prod(shape) // (shape[i] * shape[j]) * (shape[i] + 7) * (shape[j] + 127)
             for i in range(len(shape)) for j in range(len(shape)) if i != j)


def test_tiny_model_fits_a_bound_from_its_shapes(compiled):
  config, report, _ = compiled[(1, 2, 2)]
  cfg = configlib.model_config(config)
  assert report["fits"] and report["chips"] == 4 and report["device_kind"] == "TPU v5 lite"
  assert report["usable_hbm_bytes"] == int(15.75 * 2**30)  # what libtpu says a v5e chip offers
  # Arguments: every array of the state and the batch (four [8 / fsdp 2, seq_len] arrays), each
  # at most as large as its TPU tiles.
  B, T, S = 8 // 2, cfg.shape.segment_len, config.seq_len // cfg.shape.segment_len
  args_bound = sum(map(tile_bound, state_shards(config))) + 4 * tile_bound((B, config.seq_len))
  assert report["argument_bytes"] <= args_bound
  # Activations, generous: XLA keeps at most every layer's input for the whole sequence and,
  # within one segment, every layer's forward (q, k, v, attention output and [N, T, T] scores, the
  # MLP's three [T, F] arrays), the logits with their softmax and gradient, and every parameter's
  # gradient at full (unsharded) size; all float32, doubled for XLA's copies.
  s = cfg.shape
  D, F, N, H, V, L = s.d_model, s.mlp_dim, s.num_heads, s.head_dim, s.vocab_size, s.num_layers
  acts = 4 * B * (S * T * L * D + T * L * (8 * D + 4 * N * H + 3 * F + N * T) + 3 * T * V)
  grads = 4 * dry_run.estimate(config, cfg, device_count=4)["parameters"]
  assert report["temp_bytes"] <= 2 * (acts + grads)
  # The state goes in and comes out (donated: aliased, counted once).
  assert report["total_bytes"] <= args_bound + 2 * (acts + grads)


def abstract_params(config):
  """[(shape, logical axis names)] of the model's parameters."""
  model = nnx.eval_shape(lambda: InfiniTransformer(configlib.model_config(config),
                                                   rngs=nnx.Rngs(0)))
  return [(v.shape, v.get_metadata().get("out_sharding") or (None,) * len(v.shape))
          for _, v in nnx.to_flat_state(nnx.split(model)[1])]


def test_counts_of_each_collective_in_each_form(compiled):
  _, report, hlo = compiled[(1, 2, 2)]
  counts = report["collectives"]
  assert set(counts) == set(aot.COLLECTIVES)
  # fsdp gathers parameters, most asynchronously (libtpu's async collective fusions), and
  # reduce-scatters gradients (libtpu's all-reduce-scatter fusions).
  assert counts["all-gather"]["sync"] > 0 and counts["all-gather"]["start"] > 0
  assert counts["reduce-scatter"]["sync"] + counts["reduce-scatter"]["start"] > 0
  # Every op the HLO names is counted once, in one form.
  named = sum(len(re.findall(rf" {op}(?:-start|-done)?\(", hlo)) for op in aot.COLLECTIVES)
  assert named == sum(sum(n.values()) for n in counts.values())


def full_size_all_reduces(config, hlo):
  """All-reduced arrays as large as one layer's matrix gradient before the data axes split it
  (its shard over tensor alone; a stacked parameter's gradient is made layer by layer inside
  the layer scan). Reduce-scattering a gradient over fsdp never all-reduces one of these; pure
  data parallelism all-reduces every gradient whole."""
  rules = sh.check_rules(config.sharding_rules)
  sizes = set()
  for shape, names in abstract_params(config):
    if names and names[0] == sh.LAYERS:
      shape, names = shape[1:], names[1:]
    if len(shape) < 2:
      continue  # norm scales and gates: a few numbers each
    split = [config.mesh.tensor if "tensor" in np.atleast_1d(axes if axes else []) else 1
             for axes in sh.spec(names, rules)]
    sizes.add(math.prod(d // t for d, t in zip(shape, split)))
  return [a for c in aot.collectives(hlo) if c["op"] == "all-reduce"
          for a in c["arrays"] if math.prod(a[1]) in sizes]


def test_the_gradient_check_catches_pure_data_parallelism(compiled):
  config, report, hlo = compiled[(4, 1, 1)]
  none = {"sync": 0, "start": 0, "done": 0}
  assert report["collectives"]["all-gather"] == report["collectives"]["reduce-scatter"] == none
  assert full_size_all_reduces(config, hlo)  # every gradient, whole, over data


def test_fsdp_gradients_are_not_all_reduced_at_full_size(compiled):
  config, report, hlo = compiled[(1, 2, 2)]
  assert not full_size_all_reduces(config, hlo)


def pg19_like(data):
  """The tiny model shaped like configs/pg19.py where it matters to the collectives: bfloat16
  compute, Adafactor, heads of 128 (with tiny's heads of 16, XLA lays the attention gradients out
  with the split embed axis minor, and libtpu all-reduces them whole even on v5e:2x2), on 16
  chips with `data` data-parallel groups and the rest fsdp."""
  c = tiny_config(data, 16 // data, 1)
  c.model.shape.update(num_heads=2, num_kv_heads=2, head_dim=128)
  c.model.dtype = "bfloat16"
  c.optimizer.name = "adafactor"
  c.batch_size = 16  # one sequence per chip
  return c


@pytest.fixture(scope="module")
def compiled_16():
  """{data: (config, report, optimized HLO)} for the tiny pg19 on v5e:4x4: fsdp over all 16 chips,
  and the data share that configs/pg19.py ships."""
  shipped = importlib.import_module("configs.pg19").get_config(None).mesh.data
  out = {}
  for data in sorted({1, shipped}):
    config = pg19_like(data)
    report, exe = aot.compile_step(config, "v5e:4x4")
    out[data] = config, report, exe.as_text()
  return out


def test_fsdp_over_a_whole_slice_all_reduces_gradients(compiled_16):
  # libtpu lowers a reduce-scatter over every chip of a 16-chip slice as an all-reduce of the whole
  # array and a slice: every weight's gradient, attention and MLP, at full size.
  config, report, hlo = compiled_16[1]
  whole = {a[1] for a in full_size_all_reduces(config, hlo)}
  assert {(256, 2, 128), (2, 128, 256), (256, 768), (768, 256)} <= whole
  assert sum(report["collectives"]["reduce-scatter"].values()) == 0


def test_pg19_mesh_reduce_scatters_its_gradients(compiled_16):
  # With a data axis of 2 the fsdp groups are half the slice: the layers' gradients are
  # reduce-scattered over fsdp and only their shards all-reduced over data; so is the embedding
  # table's (sharding.lookup).
  data = importlib.import_module("configs.pg19").get_config(None).mesh.data
  config, report, hlo = compiled_16[data]
  assert not full_size_all_reduces(config, hlo)
  assert data > 1
  assert sum(report["collectives"]["reduce-scatter"].values()) > 0


def test_refuses_a_mesh_that_does_not_match_the_slice():
  with pytest.raises(ValueError, match=r"mesh data=1 fsdp=2 tensor=1 does not match v5e:2x2's "
                                       r"4 chips") as e:
    aot.compile_step(tiny_config(1, 2, 1), "v5e:2x2")
  assert "\n" not in str(e.value)


def test_refuses_when_libtpu_is_missing(monkeypatch, capsys):
  monkeypatch.setattr(aot.importlib.util, "find_spec",
                      lambda name, *a: None if name == "libtpu" else find_spec(name, *a))
  assert aot.check(tiny_config(1, 2, 2), "v5e:2x2") == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and "needs libtpu" in err and 'pip install "jax[tpu]==' in err


find_spec = aot.importlib.util.find_spec


@pytest.mark.parametrize("command", [["-m", "infini_jax.aot"],
                                     ["train.py", "--workdir=unused", "--dry_run"]])
def test_refuses_an_unknown_topology_in_one_line(command):
  # As a user runs it: one line on stderr, no traceback, and libtpu's own warnings silenced.
  proc = subprocess.run(
      [sys.executable, *command, "--config=configs/demo.py:runlocal", "--topology=v9x:1x1"],
      cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2 and proc.stdout == ""
  assert proc.stderr.startswith("error: unknown TPU topology 'v9x:1x1'")
  assert proc.stderr.count("\n") == 1 and "v5e:8x8" in proc.stderr
  for name in ("v5e:9x9", "v5e"):  # a slice libtpu cannot lay out; not a slice name at all
    with pytest.raises(ValueError, match=f"unknown TPU topology '{name}'.*v5e:2x2, v5e:4x4"):
      aot.topology(name)


def test_out_of_memory_is_read_from_xla_message():
  # libtpu's words when a step does not fit (seen compiling the 1B recipe for v5e:4x4).
  message = ("RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO "
             "temporaries (33.69G) exceeds available HBM (15.75G).")
  assert aot._needed(message) == (int(33.69 * 2**30), int(15.75 * 2**30))
  assert aot._needed("INTERNAL: something else") is None


def test_readme_table_from_reports(compiled, tmp_path):
  _, report, _ = compiled[(1, 2, 2)]
  reports = tmp_path / "aot"
  reports.mkdir()
  recipe, slice_ = aot.RECIPES[1]
  big = dict(report, recipe=recipe, topology=slice_, fits=False, total_bytes=int(33.7 * 2**30),
             compile_s=499.0)
  for r in (dict(report, recipe="tiny"), big):
    (reports / (aot.report_name(r["recipe"], r["topology"]) + ".json")).write_text(json.dumps(r))
  readme = tmp_path / "README.md"
  readme.write_text(f"# title\n\n{aot.BEGIN}\nold\n{aot.END}\n\nafter\n")
  aot.update_readme(str(readme), str(reports))
  text = readme.read_text()
  assert "old" not in text and text.startswith("# title") and text.endswith("after\n")
  rows = text.split(aot.BEGIN)[1].split(aot.END)[0].strip().splitlines()
  assert len(rows) == 4  # header, rule, then the paper recipe before anything else
  assert rows[2].startswith(f"| `{recipe}` | `{slice_}` | 1, 2, 2 | does not fit: needs 33.70 GiB")
  gib = report["total_bytes"] / 2**30
  assert rows[3].startswith(f"| `tiny` | `v5e:2x2` | 1, 2, 2 | {gib:.2f} GiB (0%) | 15.75 GiB |")
  readme.write_text("no markers\n")
  with pytest.raises(ValueError, match="no <!-- aot:begin --> ... <!-- aot:end --> markers"):
    aot.update_readme(str(readme), str(reports))
