"""Configs, the optimizer's gate treatment, and training runs: loss falls, exact resume, SIGTERM."""

import glob
import importlib
import json
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from infini_jax import config as configlib
from infini_jax import evaluate, metrics, optim, trainer
from infini_jax.checkpoint import Checkpointer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, "configs", "*.py"))
                 if not p.endswith(("__init__.py", "models.py")))
# A tiny run on the small stdlib subset: compiles and trains in seconds.
TINY_RUN = ["--config.data.subset=small", "--config.seq_len=128",
            "--config.batch_size=4", "--config.train.log_every=1", "--config.train.eval_every=0",
            "--config.optimizer.warmup_steps=2", "--config.train.peak_flops=1e11"]


def load(name, arg=""):
  return importlib.import_module(f"configs.{name}").get_config(arg)


def tiny(config, data_dir, steps=6):
  config.model = configlib.defaults("tiny").model
  config.model.shape.segment_len = 32
  config.seq_len, config.batch_size = 128, 4
  config.data.update(subset="small", data_dir=data_dir)
  config.train.update(steps=steps, log_every=1, eval_every=0, checkpoint_every=2, peak_flops=1e11)
  config.optimizer.warmup_steps = min(2, steps)
  config.evals.perplexity.update(max_documents=2, max_tokens=256, chunk_len=64, batch_size=2)
  return config


STAGED = {"passkey_1b", "booksum_8b"}  # configs with a stage=pretrain|finetune argument


@pytest.mark.parametrize("name", CONFIGS)
def test_every_config_loads_and_validates_runlocal(name):
  for arg in ["runlocal"] + (["runlocal,stage=finetune"] if name in STAGED else []):
    configlib.validate(load(name, arg), device_count=1)


def test_pg19_variants_select_the_memory():
  assert load("pg19", "memory=local,rule=delta").model.memory == "local"
  assert load("pg19", "rule=delta").model.infini.rule == "delta"
  full = load("pg19")
  shape = full.model.shape
  assert (shape.num_layers, shape.num_heads, shape.head_dim, shape.mlp_dim, full.seq_len,
          shape.segment_len) == (12, 8, 128, 4096, 32768, 2048)
  with pytest.raises(ValueError, match="unknown config argument 'memroy'"):
    load("pg19", "memroy=xl")


def test_passkey_filler_argument_selects_book_text_or_refuses():
  books = load("passkey", "filler=books")
  assert (books.data.passkey_filler, books.data.passkey_filler_glob) == ("text", "data/books")
  assert load("passkey").data.passkey_filler == "repeat"
  with pytest.raises(ValueError, match="passkey filler must be 'repeat' or 'books'; got 'book'"):
    load("passkey", "filler=book")


def test_python_lm_arguments_reach_the_model_of_every_memory():
  # experiments/python_lm.py passes these to XL and local as well as to Infini: the shared ones
  # must change the baselines' model too, and an Infini-only one must be refused for them.
  c = load("python_lm", "memory=xl,token_shift=8,layers=4,shift_init=0")
  configlib.validate(c, device_count=1)
  assert (c.model.memory, c.model.token_shift.size, c.model.shape.num_layers) == ("xl", 8, 4)
  assert c.model.token_shift.init == 0.0
  assert load("python_lm", "memory_scale=true,memory_add=true").model.infini.memory_scale
  with pytest.raises(ValueError, match="infini.memory_scale=True: an option of memory='infini'"):
    configlib.validate(load("python_lm", "memory=xl,memory_scale=true"), device_count=1)
  # A longer window keeps the tokens of a step (the budget) and is measured at its own length.
  base, long = load("python_lm", "memory=xl"), load("python_lm", "memory=xl,train_len=4096")
  assert (long.seq_len, long.evals.perplexity.max_tokens) == (4096, 4096)
  assert long.seq_len * long.batch_size == base.seq_len * base.batch_size
  with pytest.raises(ValueError, match="train_len=3000, segment=64: use a segment that divides"):
    load("python_lm", "train_len=3000")
  # Every memory runs on the segment asked for, the baselines' stores scaled with it.
  short = load("python_lm", "memory=memorizing,segment=32")
  assert (short.model.shape.segment_len, short.model.memorizing.memory_size, short.seq_len) == (
      32, 512, 2048)
  with pytest.raises(ValueError, match="segment=48: use a segment that divides train_len"):
    load("python_lm", "segment=48")
  assert (base.data.shuffle_seed, load("python_lm", "shuffle_seed=0").data.shuffle_seed) == (-1, 0)


def test_inconsistent_settings_are_refused():
  c = load("demo", "runlocal")
  c.seq_len = 100
  with pytest.raises(ValueError, match="seq_len=100 must be a positive multiple"):
    configlib.validate(c)
  c = load("demo", "runlocal")
  with pytest.raises(ValueError, match="does not match the 1 devices"):
    c.mesh.data = 2
    configlib.validate(c, device_count=1)
  c = load("demo", "runlocal")
  c.model.memory = "lstm"
  with pytest.raises(ValueError, match="model.memory='lstm': use one of"):
    configlib.validate(c)
  c = load("demo", "runlocal")
  c.optimizer.grad_accum = 3
  with pytest.raises(ValueError, match="must divide into optimizer.grad_accum=3"):
    configlib.validate(c)
  with pytest.raises(ValueError, match="data.text_glob is empty"):
    c = load("passkey_1b")
    c.data.tokenizer = "byte"
    configlib.validate(c)


def test_bad_override_stops_before_any_work(tmp_path):
  for flag, message in [("--config.train.stepz=3", "stepz"),
                        ("--config.train.steps=many", "steps"),
                        ("--config.seq_len=100", "must be a positive multiple")]:
    proc = subprocess.run(
        [sys.executable, "train.py", "--config=configs/demo.py:runlocal", f"--workdir={tmp_path}",
         flag], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and message in proc.stderr, proc.stderr[-2000:]
    assert not os.path.exists(tmp_path / "checkpoints")


def test_gates_get_their_own_rate_and_no_weight_decay():
  cfg = load("demo").optimizer
  cfg.update(name="adamw", lr=1e-2, warmup_steps=0, weight_decay=0.5, gate_lr_mult=10.0)
  params = {"blocks": {0: {"attn": {"gate": jnp.ones(3), "wq": jnp.ones(3)}}}}
  labels = {"blocks": {0: {"attn": {"gate": "gate", "wq": "default"}}}}
  tx, _ = optim.make(cfg, steps=10, labels=labels)
  state = tx.init(params)
  # Zero gradients: only weight decay moves anything, and it must not move the gate.
  zero = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zero, state, params)
  assert float(jnp.abs(updates["blocks"][0]["attn"]["gate"]).max()) == 0.0
  assert float(jnp.abs(updates["blocks"][0]["attn"]["wq"]).max()) > 0.0
  # Equal gradients: Adam's first step is ±lr, so the gate moves gate_lr_mult times further.
  cfg.weight_decay = 0.0
  tx, _ = optim.make(cfg, steps=10, labels=labels)
  grads = jax.tree.map(lambda p: 1e-3 * jnp.ones_like(p), params)
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(updates["blocks"][0]["attn"]["gate"],
                             10.0 * updates["blocks"][0]["attn"]["wq"], rtol=1e-5)


def test_the_loss_weighs_each_target_whatever_the_micro_batches():
  """The step's loss is Σ nll·weights / Σ weights over real targets (data.answer_weight's path),
  and splitting the batch into micro-batches changes neither the loss nor the update."""
  from infini_jax import sharding as sh
  from infini_jax import state as statelib

  rng = np.random.default_rng(0)
  tokens = rng.integers(0, 259, (4, 33)).astype(np.int32)
  mask = np.ones((4, 32), bool)
  mask[1, 20:] = False
  weights = rng.uniform(0.5, 8.0, (4, 32)).astype(np.float32)  # padding's weight must not count
  batch = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "mask": mask, "weights": weights}
  runs = {}
  for accum in (1, 2):
    c = configlib.defaults("tiny", shape=dict(num_layers=1, segment_len=16))
    c.seq_len, c.batch_size = 32, 4
    c.optimizer.grad_accum = accum
    mesh = sh.make_mesh(c.mesh, jax.devices()[:1])
    setup = statelib.build(c, configlib.validate(c, 1), mesh)
    with jax.set_mesh(mesh), sh.use_rules(setup.rules):
      state = setup.init(jax.random.key(0))
      nll, _ = setup.model(state["params"]).nll(batch["inputs"], batch["targets"], mask=mask)
      want = float((np.asarray(nll) * weights * mask).sum() / (weights * mask).sum())
      state, m = setup.train_step(state, setup.global_batch(batch))
      runs[accum] = (float(m["loss"]), jax.tree.leaves(state["params"]))
    np.testing.assert_allclose(runs[accum][0], want, rtol=1e-5)
  for a, b in zip(runs[1][1], runs[2][1]):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("tfds"))


def test_a_few_steps_lower_the_loss_and_write_metrics(tmp_path, data_dir):
  c = tiny(load("demo", "runlocal"), data_dir, steps=12)
  c.optimizer.lr = 1e-2
  c.train.eval_every = 12
  out = trainer.train_and_evaluate(c, str(tmp_path))
  rows = [r for r in metrics.read(str(tmp_path)) if "train/loss" in r]
  assert [r["step"] for r in rows] == list(range(1, 13))
  assert rows[-1]["train/loss"] < rows[0]["train/loss"] - 0.5
  assert np.isfinite(out["eval/perplexity/ppl"]) and out["eval/perplexity/ppl"] < 259
  assert os.listdir(tmp_path / "tensorboard")
  assert json.load(open(tmp_path / "config.json"))["seq_len"] == 128


def test_shuffle_seed_fixes_the_data_order_while_seed_varies_the_initialisation(tmp_path,
                                                                                data_dir):
  def first_loss(name, seed, shuffle_seed):
    c = tiny(load("demo", "runlocal"), data_dir, steps=1)
    c.seed, c.data.shuffle_seed = seed, shuffle_seed
    trainer.train_and_evaluate(c, str(tmp_path / name))
    return [r["train/loss"] for r in metrics.read(str(tmp_path / name)) if "train/loss" in r][0]

  # The first loss is the initial parameters' on the first batch: equal only if both are.
  follows = first_loss("follows", 0, -1)
  assert first_loss("same", 0, 0) == follows  # -1 follows seed
  assert first_loss("reshuffled", 0, 1) != follows  # another order, the same initialisation
  c = load("demo", "runlocal")
  c.data.shuffle_seed = -2
  with pytest.raises(ValueError, match="shuffle_seed=-2"):
    configlib.validate(c)


def run_train(workdir, data_dir, steps, wait_for=None, sig=None):
  """Runs train.py on the tiny setting; optionally sends `sig` once `wait_for(workdir)` holds."""
  cmd = [sys.executable, "train.py", "--config=configs/demo.py:runlocal", f"--workdir={workdir}",
         f"--config.data.data_dir={data_dir}", f"--config.train.steps={steps}",
         "--config.train.checkpoint_every=2"] + [
             "--config.model.shape.d_model=32", "--config.model.shape.num_layers=1",
             "--config.model.shape.num_heads=2", "--config.model.shape.num_kv_heads=2",
             "--config.model.shape.head_dim=16", "--config.model.shape.mlp_dim=64",
             "--config.model.shape.segment_len=32"] + TINY_RUN
  proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  if sig is not None:
    deadline = time.time() + 240
    while not wait_for(workdir):
      assert proc.poll() is None and time.time() < deadline, "training ended before the signal"
      time.sleep(0.05)
    proc.send_signal(sig)
  out, _ = proc.communicate(timeout=300)
  return proc.returncode, out


def losses(workdir):
  """step -> every loss logged for it (a resumed run may log a step twice)."""
  out = {}
  for r in metrics.read(str(workdir)):
    if "train/loss" in r:
      out.setdefault(r["step"], []).append(r["train/loss"])
  return out


def test_sigkill_and_resume_gives_the_uninterrupted_losses(tmp_path, data_dir):
  code, out = run_train(tmp_path / "a", data_dir, steps=8)
  assert code == 0, out[-3000:]
  reference = losses(tmp_path / "a")
  has_ckpt = lambda w: os.path.isdir(os.path.join(w, "checkpoints", "4"))  # noqa: E731
  code, out = run_train(tmp_path / "b", data_dir, steps=8, wait_for=has_ckpt, sig=signal.SIGKILL)
  assert code == -signal.SIGKILL
  code, out = run_train(tmp_path / "b", data_dir, steps=8)
  assert code == 0 and "resumed from the checkpoint of step" in out, out[-3000:]
  resumed = losses(tmp_path / "b")
  assert sorted(resumed) == sorted(reference) == list(range(1, 9))
  for step, values in resumed.items():
    for v in values:
      assert v == reference[step][0], (step, v, reference[step])


def test_sigterm_saves_a_usable_checkpoint(tmp_path, data_dir):
  logged = lambda w: os.path.exists(os.path.join(w, "metrics.jsonl"))  # noqa: E731
  code, out = run_train(tmp_path, data_dir, steps=10_000, wait_for=logged, sig=signal.SIGTERM)
  assert code == 0, out[-3000:]
  assert "SIGTERM: saved the checkpoint of step" in out
  # Not complete: the experiment scripts take final_metrics.json to mean the run is done.
  assert not (tmp_path / "final_metrics.json").exists()
  saved = max(int(s) for s in os.listdir(tmp_path / "checkpoints") if s.isdigit())
  assert saved == max(losses(tmp_path))
  code, out = run_train(tmp_path, data_dir, steps=saved + 1)
  assert code == 0 and f"resumed from the checkpoint of step {saved}" in out, out[-3000:]
  assert max(losses(tmp_path)) == saved + 1
  assert json.load(open(tmp_path / "final_metrics.json"))["step"] == saved + 1


def test_a_non_finite_loss_names_its_step_range_and_the_last_good_checkpoint(tmp_path):
  # The loop reads the metrics of several steps at once (at log and save steps): the error names
  # the first bad step, the steps read together, and the newest complete checkpoint.
  ckpt = Checkpointer(str(tmp_path), keep=2)
  ckpt.save(4, {"w": jnp.ones(3)})
  unread = [dict(loss=jnp.float32(v), grad_norm=jnp.float32(1.0), lr=jnp.float32(1e-3))
            for v in (2.0, 2.5, np.nan, np.nan)]
  with pytest.raises(trainer.NonFiniteError) as e:
    trainer._read_finite(unread, 8, ckpt)
  ckpt.close()
  assert "at step 7 (steps 5..8, read at step 8)" in str(e.value)
  assert f"Last good checkpoint: step 4 in {tmp_path / 'checkpoints'}" in str(e.value)
  assert trainer._read_finite(unread[:2], 6, ckpt) == dict(loss=2.5, grad_norm=1.0,
                                                           lr=np.float32(1e-3))


def test_a_diverging_run_stops_without_saving_a_non_finite_state(tmp_path, data_dir):
  c = tiny(load("demo", "runlocal"), data_dir, steps=8)
  c.optimizer.lr = 3e38  # Adam moves every weight by about lr: inf within a step or two
  c.train.update(log_every=4, checkpoint_every=1)  # step 1 (lr 0 in the warm-up) is saved
  with pytest.raises(trainer.NonFiniteError, match="Last good checkpoint: ") as e:
    trainer.train_and_evaluate(c, str(tmp_path))
  print(e.value)
  saved = [s for s in os.listdir(tmp_path / "checkpoints") if s.isdigit()]
  assert saved
  for step in saved:  # whatever was saved is finite throughout
    restored = ocp.StandardCheckpointer().restore(tmp_path / "checkpoints" / step / "state")
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(restored)
               if np.issubdtype(np.asarray(x).dtype, np.floating)), step
  assert f"Last good checkpoint: step {max(saved, key=int)} in" in str(e.value)


def test_a_loss_too_large_for_exp_logs_an_infinite_perplexity():
  # lr=-1 climbs to a loss of 7e6 in 60 steps; math.exp raised OverflowError on it.
  assert evaluate.perplexity(7e6) == float("inf")
  assert f"{evaluate.perplexity(7e6):.3f}" == "inf" and json.loads(json.dumps(float("inf")))
  assert evaluate.perplexity(np.float64(2.0)) == pytest.approx(np.exp(2.0))
  assert np.isnan(evaluate.perplexity(float("nan")))
