"""experiments/compare.py: the Table 2 report reads every perplexity evaluator of finished runs."""

import dataclasses
import json
import os

import pytest

from configs import models
from experiments import compare


def write_run(runs, name, seed, metrics):
  run = os.path.join(runs, name, f"seed{seed}")
  os.makedirs(run)
  with open(os.path.join(run, "config.json"), "w") as f:
    json.dump({"model": dataclasses.asdict(models.PRESETS["tiny"])}, f)
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
  write_run(runs, "full", 0, {"eval/perplexity/ppl": 9.0})  # no long evaluation: left out there
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

  T = TINY.segment_len
  x = np.asarray(np.random.default_rng(0).integers(1, TINY.vocab_size, (2, 3 * T)))
  y = x.copy()
  y[:, 0] = (y[:, 0] + 1) % TINY.vocab_size
  reaches, first = {}, {}
  for off in [(), (0,), (0, 1)]:
    model = make_model(num_layers=2)
    memory_ablation.empty_reads(model, off)
    a, b = model(x)[0], model(y)[0]
    reaches[off] = float(np.abs(np.asarray(a[:, -T:]) - np.asarray(b[:, -T:])).max())
    first[off] = np.asarray(a[:, :T])
  assert reaches[()] > 1e-4 and reaches[(0,)] > 1e-4
  assert reaches[(0, 1)] == 0.0
  np.testing.assert_allclose(first[(0, 1)], first[()], rtol=1e-6, atol=1e-6)
