"""Numbers out of range are refused before any work, in one line that says what to set instead."""

import os
import re
import subprocess
import sys

import pytest

from configs import demo
from infini_jax import config as configlib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAN, INF = float("nan"), float("inf")

# (key, a value it must refuse); the demo's runlocal config runs 60 steps.
REFUSED = [
    ("optimizer.lr", -1.0), ("optimizer.lr", NAN), ("optimizer.lr", INF),
    ("optimizer.weight_decay", -0.1),
    ("optimizer.warmup_steps", -1), ("optimizer.warmup_steps", 61),
    ("optimizer.min_lr_ratio", -0.1), ("optimizer.min_lr_ratio", 1.5),
    ("optimizer.b1", 1.0), ("optimizer.b2", -0.1), ("optimizer.eps", -1e-8),
    ("optimizer.clip_norm", 0.0), ("optimizer.clip_norm", NAN),
    ("optimizer.gate_lr_mult", 0.0),
    ("train.steps", 0), ("train.steps", -5), ("train.log_every", 0),
    ("train.eval_every", -1), ("train.checkpoint_every", -1), ("train.keep_checkpoints", 0),
    ("train.peak_flops", -1.0), ("train.peak_flops", NAN),
    ("batch_size", 0), ("batch_size", -8),
    ("evals.perplexity.batch_size", 0), ("evals.perplexity.max_documents", 0),
    ("evals.perplexity.max_tokens", -1), ("evals.passkey.batch_size", 0),
    ("evals.passkey.samples", -2),
]
# Edges that mean something and stay allowed.
ACCEPTED = [("optimizer.lr", 0.0), ("optimizer.warmup_steps", 0), ("optimizer.warmup_steps", 60),
            ("optimizer.min_lr_ratio", 0.0), ("optimizer.min_lr_ratio", 1.0), ("optimizer.b1", 0.0),
            ("train.eval_every", 0), ("train.checkpoint_every", 0), ("train.keep_checkpoints", 1),
            ("evals.perplexity.max_tokens", 0)]


def set_key(config, key: str, value) -> None:
  *parents, leaf = key.split(".")
  for name in parents:
    config = config[name]
  config[leaf] = type(config[leaf])(value)  # the field's type, as a command-line override


@pytest.mark.parametrize("key,value", REFUSED, ids=[f"{k}={v}" for k, v in REFUSED])
def test_out_of_range_is_refused_with_a_setting_that_works(key, value):
  c = demo.get_config("runlocal")
  set_key(c, key, value)
  with pytest.raises(ValueError) as e:
    configlib.validate(c, device_count=1)
  message = str(e.value)
  assert "\n" not in message and message.startswith(f"{key}=")
  # The message ends with an example; applying it gives a config that validates.
  suggested_key, suggested = re.search(r"--config\.(\S+)=(\S+)$", message).groups()
  assert suggested_key == key
  set_key(c, key, float(suggested) if "." in suggested or "e" in suggested else int(suggested))
  configlib.validate(c, device_count=1)


@pytest.mark.parametrize("key,value", ACCEPTED, ids=[f"{k}={v}" for k, v in ACCEPTED])
def test_edges_that_mean_something_are_accepted(key, value):
  c = demo.get_config("runlocal")
  set_key(c, key, value)
  configlib.validate(c, device_count=1)


def test_train_py_refuses_a_negative_learning_rate_in_one_line(tmp_path):
  # Accepted before, this trained 60 steps to a loss of 7e6 and died printing the perplexity.
  proc = subprocess.run(
      [sys.executable, "train.py", "--config=configs/demo.py:runlocal", f"--workdir={tmp_path}",
       "--config.optimizer.lr=-1"], cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode != 0
  assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
  errors = [line for line in proc.stderr.splitlines() if "error" in line.lower()]
  assert len(errors) == 1, proc.stderr[-2000:]
  assert errors[0].startswith("train.py: error: optimizer.lr=-1.0 is out of range")
  assert "e.g. --config.optimizer.lr=" in errors[0]
  assert os.listdir(tmp_path) == []  # nothing written: refused before any work
