"""experiments/compare.py: the Table 2 report reads every perplexity evaluator of finished runs."""

import json
import os

import pytest

from configs import models
from experiments import compare


# The tiny preset as a run's config.json had it before the model config had sections.
FLAT_TINY = dict(
    vocab_size=264, d_model=64, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16,
    mlp_dim=128, segment_len=64, memory="infini", rule="linear", gate_init=0.0,
    rope_theta=10000.0, rope_scaling="none", rope_scaling_factor=1.0, rope_low_freq_factor=1.0,
    rope_high_freq_factor=4.0, rope_original_max_len=8192, norm_eps=1e-05, tie_embeddings=False,
    dtype="float32", param_dtype="float32", remat="full", attention_impl="blocked",
    memory_size=0, topk=32, knn_layer=-1, compress_rate=4, memory_tokens=0, token_shift=0,
    token_shift_init=1.0, memory_scale=False, write_gate=False, memory_decay=False,
    xl_cache=False, query_gate=False, memory_add=False)


def write_run(runs, name, seed, metrics, flat=False):
  run = os.path.join(runs, name, f"seed{seed}")
  os.makedirs(run)
  with open(os.path.join(run, "config.json"), "w") as f:
    json.dump({"model": FLAT_TINY if flat else models.PRESETS["tiny"].to_dict()}, f)
  with open(os.path.join(run, "final_metrics.json"), "w") as f:
    json.dump(metrics, f)


def test_one_table_per_perplexity_evaluator(tmp_path):
  runs = str(tmp_path)
  for seed, (a, b) in enumerate([(4.0, 6.0), (4.2, 6.4)]):
    write_run(runs, "infini_linear", seed, {
        "eval/perplexity/ppl": a, "eval/perplexity/ppl_seg_1": a + 1,
        "eval/perplexity_long/ppl": b, "eval/perplexity_long/ppl_seg_129-256": b - 1})
    write_run(runs, "local", seed, {"eval/perplexity/ppl": a + 0.5,
                                    "eval/perplexity_long/ppl": b - 1})
  # No long evaluation: left out there. Written by an earlier version: a flat model config.
  write_run(runs, "full", 0, {"eval/perplexity/ppl": 9.0}, flat=True)
  compare.main([runs])
  report = open(os.path.join(runs, "compare.md")).read()
  short, long = report.split("perplexity_long:")
  assert short.startswith("perplexity:")
  # Best first, mean ± sample std over seeds; a missing position is a dash.
  rows = [line for line in short.splitlines() if line.startswith("| ") and "seeds" not in line]
  assert [r.split(" | ")[0][2:] for r in rows] == ["infini_linear", "local", "full"]
  assert "| 4.100 ± 0.141 | 5.100 |" in rows[0] and "| – |" in rows[1]
  rows = [line for line in long.splitlines() if line.startswith("| ") and "seeds" not in line]
  assert [r.split(" | ")[0][2:] for r in rows] == ["local", "infini_linear"]
  assert "| 5.200 ± 0.283 |" in rows[0] and "| 5.200 |" in rows[1]  # seg 129-256: 5.0, 5.4
  for evaluator in ("perplexity", "perplexity_long"):
    assert os.path.getsize(os.path.join(runs, f"compare_{evaluator}.png")) > 0


def test_gaps_against_a_reference_pair_runs_by_seed(tmp_path):
  runs = str(tmp_path)
  # Seed 2 is worse for both, so the spread across seeds is wide while the pairs agree.
  for seed, (x, i) in {0: (4.2, 4.15), 1: (4.1, 4.06), 2: (4.4, 4.38)}.items():
    write_run(runs, "xl", seed, {"eval/perplexity/ppl": x})
    write_run(runs, "infini", seed, {"eval/perplexity/ppl": i})
  write_run(runs, "local", 3, {"eval/perplexity/ppl": 5.0})  # no seed in common: left out
  compare.main([runs, "xl"])
  report = open(os.path.join(runs, "compare.md")).read()
  rows = report.split("seed by seed against xl:")[1].splitlines()
  row = next(r for r in rows if r.startswith("| infini |"))
  assert "| 0, 1, 2 | -0.050, -0.040, -0.020 | -0.037 ± 0.015 | 3 of 3 | -0.24 |" in row
  assert "(0.153)" in rows[2] and not any(r.startswith("| local") for r in rows)
  with pytest.raises(SystemExit, match="no finished run 'xll'"):
    compare.main([runs, "xll"])


def test_gate_table_names_each_run_by_its_seed(tmp_path):
  runs = str(tmp_path)
  for seed, g in ((3, 0.05), (7, 0.95)):  # seeds need not start at 0 nor follow each other
    write_run(runs, "infini", seed, {"eval/perplexity/ppl": 4.0, "eval/gates/gate/layer0/head0": g,
                                     "eval/gates/gate/layer0/head1": 0.5})
  compare.main([runs])
  rows = [r for r in open(os.path.join(runs, "compare.md")).read().splitlines()
          if r.startswith("| infini | ") and "layer0" in r]
  assert rows == ["| infini | 3 | layer0 | 0.050 / 0.275 / 0.500 | 1 | 0 | 2 |",
                  "| infini | 7 | layer0 | 0.500 / 0.725 / 0.950 | 0 | 1 | 2 |"]


def test_memory_ablation_empties_the_reads_of_the_layers_named(make_model):
  """experiments/memory_ablation.py: with every layer's reads emptied, the last segment no longer
  depends on the first; with one layer's, the other layer's reads still carry it. In the first
  segment an emptied read is what the model computes anyway (its memory is empty)."""
  import numpy as np

  from experiments import memory_ablation
  from tests.conftest import TINY

  T = TINY.shape.segment_len
  x = np.asarray(np.random.default_rng(0).integers(1, TINY.shape.vocab_size, (2, 3 * T)))
  y = x.copy()
  y[:, 0] = (y[:, 0] + 1) % TINY.shape.vocab_size
  reaches, first = {}, {}
  for off in [(), (0,), (0, 1)]:
    model = make_model(shape=dict(num_layers=2))
    memory_ablation.empty_reads(model, off)
    a, b = model(x)[0], model(y)[0]
    reaches[off] = float(np.abs(np.asarray(a[:, -T:]) - np.asarray(b[:, -T:])).max())
    first[off] = np.asarray(a[:, :T])
  assert reaches[()] > 1e-4 and reaches[(0,)] > 1e-4
  assert reaches[(0, 1)] == 0.0
  np.testing.assert_allclose(first[(0, 1)], first[()], rtol=1e-6, atol=1e-6)


# experiments/python_lm.sh's default list, which experiments/python_lm.py replaced: MEMORY,
# infini:RULE or MEMORY:RULE:OPTIONS, OPTIONS configs/python_lm.py's arguments joined by +.
BASH_SPECS = """infini:linear local xl infini:linear:write_gate infini:linear:decay
infini:linear:xl_cache infini:linear:decay+xl_cache infini:linear:gate_init=-3
infini:linear:decay+gate_init=-3 infini:linear:decay+xl_cache+gate_init=-3
infini:linear:query_gate infini:linear:decay+xl_cache+gate_init=-3+query_gate
infini:linear:decay+gate_init=-3+memory_add infini:linear:decay+xl_cache+gate_init=-3+memory_add
xl::token_shift=8 infini:linear:decay+xl_cache+gate_init=-3+memory_add+token_shift=8+memory_scale
xl::token_shift=8+shift_init=0
infini:linear:decay+xl_cache+gate_init=-3+memory_add+token_shift=8+memory_scale+shift_init=0
infini:delta memorizing rmt full memorizing::token_shift=8+shift_init=0
xl::token_shift=8+shift_init=0+segment=32
infini:linear:decay+xl_cache+gate_init=-3+memory_add+token_shift=8+memory_scale+shift_init=0+segment=32
xl::token_shift=8+shift_init=0+segment=16
infini:linear:decay+xl_cache+gate_init=-3+memory_add+token_shift=8+memory_scale+shift_init=0+segment=16
local::token_shift=8+shift_init=0+segment=16 memorizing::token_shift=8+shift_init=0+segment=16"""


def bash_run(spec: str, steps: int) -> tuple[str, str]:
  """(run directory name, config argument) as the script made them from a spec."""
  memory, rule, option = (spec.split(":") + ["", ""])[:3]
  rule = rule or "linear"
  name = memory + (f"_{rule}" if memory == "infini" else "")
  name += "_" + option.replace("+", "_").replace("=", "_") if option else ""
  arg = f"memory={memory},rule={rule},steps={steps}" + (
      "," + option.replace("+", ",") if option else "")
  return name, arg


def test_python_lm_runs_are_the_scripts_with_the_same_names_and_configs():
  """Every run keeps its directory name (existing runs and the docs name them) and its model:
  the config the Python list gives validates and equals the script's, field by field."""
  from configs import python_lm as config_file
  from experiments import python_lm
  from infini_jax import config as configlib

  want = [bash_run(spec, 300) for spec in BASH_SPECS.split()]
  assert [name for name, _ in python_lm.RUNS] == [name for name, _ in want]
  assert len(want) == 29 and len(set(dict(want))) == 29
  for (name, args), (_, bash_arg) in zip(python_lm.RUNS, want):
    assert python_lm.name_of(args) == name
    ours = config_file.get_config(python_lm.config_arg(args, 300))
    configlib.validate(ours, device_count=1)
    assert ours.to_dict() == config_file.get_config(bash_arg).to_dict(), name


def test_python_lm_extra_runs_are_named_as_the_list_names_them():
  from experiments import python_lm

  runs = python_lm.select(["xl"], ["memory=xl,token_shift=8,train_len=4096",
                                   "memory=infini,rule=delta,decay,gate_init=-3"])
  assert [name for name, _ in runs] == ["xl", "xl_token_shift_8_train_len_4096",
                                        "infini_delta_decay_gate_init_-3"]
  assert python_lm.config_arg(runs[2][1], 10) == (
      "memory=infini,rule=delta,steps=10,decay=true,gate_init=-3")
  assert len(python_lm.select([], [])) == len(python_lm.RUNS)
  with pytest.raises(ValueError, match="unknown run 'xll'"):
    python_lm.select(["xll"], [])


def test_python_lm_sweep_skips_finished_runs_and_stops_at_a_failure(tmp_path):
  from experiments import python_lm

  runs = [("xl", dict(memory="xl")), ("local", dict(memory="local"))]
  os.makedirs(tmp_path / "xl" / "seed0")
  (tmp_path / "xl" / "seed0" / "final_metrics.json").write_text("{}")
  calls = []

  def fake(cmd, stdout, stderr, code=0):
    calls.append(cmd)
    return type("Done", (), {"returncode": code})()

  trained = python_lm.sweep(str(tmp_path), runs, [0, 1], 20, run=fake)
  assert trained == [str(tmp_path / name / f"seed{s}") for s, name in
                     [(0, "local"), (1, "xl"), (1, "local")]]
  assert calls[0][1:] == ["train.py", "--config=configs/python_lm.py:memory=local,rule=linear,"
                          "steps=20", "--config.seed=0", f"--workdir={tmp_path}/local/seed0"]
  with pytest.raises(RuntimeError, match=r"local seed 2 failed \(exit 1\): see .*train.log"):
    python_lm.sweep(str(tmp_path), runs[1:], [2], 20, run=lambda *a, **k: fake(*a, **k, code=1))


def test_books_passkey_table_merges_a_runs_sweeps_shortest_prompt_first(tmp_path):
  from experiments import books_compare

  def sweep(run, name, acc, samples=10):
    os.makedirs(tmp_path / "passkey" / run, exist_ok=True)
    with open(tmp_path / "passkey" / run / name, "w") as f:
      json.dump({"acc": acc, "digits": {k: {p: v / 2 for p, v in c.items()} for k, c in
                                        acc.items()}, "samples": samples}, f)

  sweep("infini/seed2", "sweep.json", {"4K": {"start": 1.0, "end": 0.5}, "448": {"start": 0.2}})
  sweep("infini/seed2", "sweep_1m.json", {"1M": {"start": 0.0}}, samples=2)
  sweep("xl/seed2", "sweep.json", {"32K": {"middle": 0.1}})
  rows = books_compare.passkey_table(str(tmp_path)).splitlines()[2:]
  assert [r.split(" | ")[:2] for r in rows] == [
      ["| infini seed2", "448"], ["| infini seed2", "4K"], ["| infini seed2", "1M"],
      ["| xl seed2", "32K"]]
  assert rows[1] == "| infini seed2 | 4K | 100% (50%) | – | 50% (25%) | 10 |"
  assert rows[2].endswith("| 2 |")
  assert books_compare.passkey_table(str(tmp_path / "none")) == ""


def test_gates_table_gives_each_infini_runs_layers_quartiles_and_skips_runs_without_gates():
  from experiments import compare

  def run(seed, layer0, layer1=()):
    m = {f"eval/gates/gate/layer0/head{h}": v for h, v in enumerate(layer0)}
    m.update({f"eval/gates/gate/layer1/head{h}": v for h, v in enumerate(layer1)})
    return dict(metrics=m, seed=seed)

  rows = compare.gates({"infini_best": [run("0", [0.05, 0.5, 0.95], [0.2, 0.3, 0.4])],
                        "xl_best": [dict(metrics={"eval/perplexity/ppl": 9.0}, seed="0")]})
  assert rows.splitlines()[2:] == [
      "| infini_best | 0 | layer0 | 0.050 / 0.500 / 0.950 | 1 | 1 | 3 |",
      "| infini_best | 0 | layer1 | 0.200 / 0.300 / 0.400 | 0 | 0 | 3 |"]
  assert compare.gates({"xl_best": [dict(metrics={}, seed="0")]}) == ""


def test_books_passkey_empty_reads_takes_layer_numbers_and_refuses_what_the_model_lacks(
    make_model):
  import ml_collections
  import numpy as np

  from experiments import books_passkey, memory_ablation
  config = ml_collections.ConfigDict(dict(model=dict(memory="infini",
                                                     shape=dict(num_layers=2))))
  model = make_model(shape=dict(num_layers=2))
  assert books_passkey.empty_reads(model, config, "") == ()
  assert not isinstance(model.stages[0].blocks.attn.memory.gate, memory_ablation.EmptyReads)
  assert books_passkey.empty_reads(model, config, "1") == (1,)
  np.testing.assert_array_equal(model.stages[0].blocks.attn.memory.gate.on[...], [1.0, 0.0])
  for layers, match in [("2", "has layers 0 to 1"), ("0,x", "give layer numbers")]:
    with pytest.raises(ValueError, match=match):
      books_passkey.empty_reads(model, config, layers)
  config.model.memory = "xl"
  with pytest.raises(ValueError, match="use it on an infini run"):
    books_passkey.empty_reads(make_model(memory="xl"), config, "0")


def test_books_passkey_hold_keeps_a_layers_memory_so_later_text_cannot_reach_it(make_model):
  """One layer, its memory held after the first segment: the text between that segment and the
  reply's own segment changes the replies only through the held memory, so not at all."""
  import ml_collections
  import numpy as np

  from experiments import books_passkey
  from infini_jax import evaluate
  from tests.conftest import set_gates
  model = make_model(shape=dict(num_layers=1))
  set_gates(model, 6.0)  # the replies read the memory almost alone, so what it holds shows
  T = model.cfg.shape.segment_len
  rng = np.random.default_rng(0)
  prompt, reply = rng.integers(1, 64, 5 * T), rng.integers(1, 64, 2 * T)
  other = prompt.copy()
  other[T:4 * T] = rng.integers(1, 64, 3 * T)  # segments 2-4: after the hold, before the reply
  plain = evaluate.TeacherForced(model, chunk_segments=1)
  held = books_passkey.HeldScorer(model, chunk_segments=1, layer=0, after=T)
  np.testing.assert_array_equal(held([(prompt, reply)])[0], held([(other, reply)])[0])
  assert (plain([(prompt, reply)])[0] != plain([(other, reply)])[0]).any()
  late = books_passkey.HeldScorer(model, chunk_segments=1, layer=0, after=10 * T)
  np.testing.assert_array_equal(late([(prompt, reply)])[0], plain([(prompt, reply)])[0])

  config = ml_collections.ConfigDict(dict(model=dict(memory="infini", shape=dict(num_layers=2))))
  assert books_passkey.parse_hold("1:4096", config) == (1, 4096)
  assert books_passkey.parse_hold("", config) is None
  for hold in ["2:4096", "0:0", "0", "a:1"]:
    with pytest.raises(ValueError, match="--hold="):
      books_passkey.parse_hold(hold, config)
