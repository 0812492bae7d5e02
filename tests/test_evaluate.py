"""Evaluators on a tiny model and tiny data, their reports, and eval.py on a trained checkpoint."""

import json
import math
import os
import subprocess
import sys

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from configs import demo
from tests.conftest import set_gates
from infini_jax import config as configlib
from infini_jax import evaluate, report, trainer
from infini_jax.data import pipeline
from infini_jax.model import InfiniTransformer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# One layer, no remat: compiles fast.
SHAPE = dict(d_model=32, num_layers=1, num_heads=4, num_kv_heads=2, head_dim=8, mlp_dim=64,
             segment_len=16)
MODEL = dict(remat="none", shape=SHAPE)
PASSKEY = dict(lengths=(260, 400), positions=("start", "end"), samples=3, batch_size=2,
               chunk_segments=4, progress=False)


def tiny_config(data_dir: str, **model):
  """demo.py shrunk to seconds: the tiny model, python_code's small subset, short evals."""
  c = demo.get_config("runlocal")
  c.model.update(MODEL, **model)
  c.seq_len, c.batch_size = 4 * c.model.shape.segment_len, 2
  c.data.update(subset="small", data_dir=data_dir)
  c.train.update(steps=2, log_every=1, eval_every=0, checkpoint_every=2, peak_flops=1e11)
  c.optimizer.warmup_steps = 1
  c.evals.perplexity.update(max_documents=2, max_tokens=120, chunk_len=32, batch_size=2)
  c.evals.passkey.update(PASSKEY)
  return c


@pytest.fixture(scope="module")
def config(tmp_path_factory):
  return tiny_config(str(tmp_path_factory.mktemp("tfds")))


@pytest.fixture(scope="module")
def model(config):
  model = InfiniTransformer(configlib.model_config(config), rngs=nnx.Rngs(0))
  set_gates(model, jnp.linspace(-3.0, 3.0, SHAPE["num_heads"]))
  return model


@pytest.fixture(scope="module")
def results(config, model):
  """{name: (evaluator, metrics)} for every evaluator of the config, on the untrained model."""
  pipeline.prepare_from_config(config.data, config.seq_len)
  return {name: (ev, dict(ev.run(model))) for name, ev in evaluate.from_config(config).items()}


def test_streaming_perplexity_equals_one_whole_sequence_call(results, model):
  ev, metrics = results["perplexity"]
  assert ev.chunk_len < max(len(d) for d in ev.documents())  # really streamed in chunks
  total, count, first = 0.0, 0, []
  nll_of = nnx.jit(lambda model, x, y: model.nll(x, y)[0])
  for doc in ev.documents():
    nll = nll_of(model, doc[None, :-1], doc[None, 1:])  # the whole document in one call
    total, count = total + float(nll.sum()), count + nll.size
    first.append(np.asarray(nll[0, :ev.segment_len]))
  assert metrics["tokens"] == count
  np.testing.assert_allclose(metrics["ppl"], math.exp(total / count), rtol=1e-5)
  np.testing.assert_allclose(metrics["ppl_seg_1"], math.exp(np.concatenate(first).mean()),
                             rtol=1e-5)
  assert [k for k in metrics if k.startswith("ppl_seg_")][:3] == [
      "ppl_seg_1", "ppl_seg_2", "ppl_seg_3-4"]


def test_passkey_sweep_is_well_formed(results):
  _, metrics = results["passkey"]
  cells = [f"{m}_{n}_{p}" for n in ("260", "400") for p in ("start", "end")
           for m in ("acc", "digits")]
  assert sorted(metrics) == sorted(cells + ["acc", "digits"])
  assert all(0.0 <= v <= 1.0 for v in metrics.values())


def test_periodic_evals_leave_the_passkey_sweep_to_eval_py(results, model):
  evaluators = {name: ev for name, (ev, _) in results.items()}
  assert not evaluators["passkey"].during_training
  metrics = evaluate.run_all({k: evaluators[k] for k in ("passkey", "gates")}, model)
  assert metrics and all(k.startswith("gates/") for k in metrics)


def test_passkey_scorer():
  assert evaluate.score_passkey(" 71432", "71432") == (1.0, True)
  assert evaluate.score_passkey(" 71482", "71432") == (0.8, False)
  assert evaluate.score_passkey(" 7143", "71432") == (0.8, False)
  assert evaluate.score_passkey("", "71432") == (0.0, False)
  assert evaluate.length_label(32768) == "32K" and evaluate.length_label(2**20) == "1M"


def test_gates_cover_every_head(results):
  _, metrics = results["gates"]
  heads = SHAPE["num_layers"] * SHAPE["num_heads"]
  assert metrics["heads_local"] + metrics["heads_mixed"] + metrics["heads_memory"] == heads
  assert metrics["heads_local"] == metrics["heads_memory"] == 1  # gates ±3: 0.05, 0.95
  assert len([k for k in metrics if k.startswith("gate/")]) == heads


def test_reports_write_json_tables_and_plots(results, tmp_path):
  for name, (ev, metrics) in results.items():
    table = report.write(name, ev, metrics, str(tmp_path), step=7)
    saved = json.load(open(tmp_path / f"{name}.json"))
    assert saved["step"] == 7 and saved["metrics"] == metrics and saved["table"] == table
    assert open(tmp_path / f"{name}.png", "rb").read(4) == b"\x89PNG"
  table = report.write("passkey", *results["passkey"], str(tmp_path), step=7)
  assert "(start/end)" in table.splitlines()[0]
  assert table.splitlines()[1].split() == ["260", "400"]  # the paper's Table 3 columns


@pytest.fixture(scope="module")
def trained(config, tmp_path_factory):
  """A workdir with the checkpoint of a 2-step training run of the tiny config."""
  workdir = str(tmp_path_factory.mktemp("run"))
  trainer.train_and_evaluate(config, workdir)
  return workdir


def run_eval(*flags):
  return subprocess.run([sys.executable, "eval.py", "--config=configs/demo.py:runlocal", *flags],
                        cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_eval_py_end_to_end(config, trained, tmp_path):
  # A data_dir where nothing is prepared: eval.py generates the embedded dataset, as training does.
  fresh = str(tmp_path / "tfds")
  overrides = ["--config.model.remat=none"] + [
      f"--config.model.shape.{k}={v}" for k, v in SHAPE.items()] + [
      f"--config.seq_len={config.seq_len}", "--config.data.subset=small",
      f"--config.data.data_dir={fresh}", "--config.evals.perplexity.max_tokens=120",
      "--config.evals.passkey.lengths=(260,)", "--config.evals.passkey.samples=1",
      "--config.evals.passkey.batch_size=1"]
  proc = run_eval(f"--workdir={trained}", *overrides)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "passkey retrieval accuracy" in proc.stdout and "perplexity by context" in proc.stdout
  assert os.listdir(os.path.join(fresh, "python_code"))
  out = os.path.join(trained, "eval", "2")
  assert sorted(os.listdir(out)) == sorted(
      [f"{n}.{e}" for n in ("gates", "passkey", "perplexity") for e in ("json", "png")]
      + ["results.json"])
  for name in ("gates", "passkey", "perplexity"):
    assert os.path.getsize(os.path.join(out, f"{name}.png")) > 1000
    assert np.isfinite(list(json.load(open(os.path.join(out, f"{name}.json")))["metrics"]
                            .values())).all()
  # --only reruns one evaluator and keeps what the others measured in results.json.
  os.remove(os.path.join(out, "passkey.json"))
  proc = run_eval(f"--workdir={trained}", "--only=gates", *overrides)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "passkey retrieval" not in proc.stdout and not os.path.exists(
      os.path.join(out, "passkey.json"))
  assert sorted(json.load(open(os.path.join(out, "results.json")))["results"]) == [
      "gates", "passkey", "perplexity"]


def test_bad_inputs_are_one_line_errors_that_say_what_to_do(config, trained, tmp_path):
  """eval.py prints these as `eval.py: error: MESSAGE` and exits with status 1."""
  def error(exc_type, match, cfg, workdir=trained):
    with pytest.raises(exc_type, match=match) as e:
      report.evaluate_checkpoint(cfg, workdir)
    assert "\n" not in str(e.value)

  error(FileNotFoundError, "no checkpoints in .* train first", config, str(tmp_path))
  with pytest.raises(FileNotFoundError, match=r"no checkpoint for step 5 in .*; have \[2\]"):
    report.evaluate_checkpoint(config, trained, step=5)
  error(ValueError, "was written by a model with a different shape: params .* is \\(.*32.*\\) "
        "there, \\(.*48.*\\) here .*use the config it was trained with",
        tiny_config(config.data.data_dir, shape=dict(d_model=48)))
  empty = tiny_config(config.data.data_dir)
  empty.evals = ml_collections.ConfigDict()
  error(ValueError, "no evaluators .* add perplexity, passkey or gates entries", empty)
  short = tiny_config(config.data.data_dir)
  short.evals.passkey.lengths = (100, 4096)
  error(ValueError, "passkey length 100 is too short.*use a length >= 243", short)
  with pytest.raises(ValueError, match="--only names evaluators the config does not have"):
    report.evaluate_checkpoint(config, trained, only=("gatez",))
  typo = tiny_config(config.data.data_dir)
  typo.evals.passkey.samplez = 3
  error(ValueError, "evals.passkey: .*samplez", typo)


def test_perplexity_on_passkey_prompts_that_fit_the_training_length(tmp_path, model):
  """passkey_length 0 ("fit the training window") is read with the config's seq_len."""
  c = tiny_config(str(tmp_path))
  c.seq_len = 16 * c.model.shape.segment_len  # 256 tokens: the shortest prompt takes 243
  c.data.update(name="passkey", passkey_length=0, passkey_examples=4, passkey_eval_examples=2)
  pipeline.prepare_from_config(c.data, c.seq_len)
  ev = evaluate.Perplexity(c, split="validation", max_documents=2, chunk_len=32, batch_size=2)
  docs = ev.documents()
  assert [len(d) for d in docs] == [c.seq_len + 1] * 2  # BOS + prompt + " " + key + EOS
  metrics = dict(ev.run(model))
  assert math.isfinite(metrics["ppl"]) and metrics["tokens"] == 2 * c.seq_len
