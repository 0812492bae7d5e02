"""Two processes on localhost (jax.distributed, CPU collectives) train like one process, and a
SIGTERM to either one stops both at the same step."""

import os
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from infini_jax import metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--config=configs/demo.py:runlocal", "--config.data.subset=small",
        "--config.train.steps=3", "--config.optimizer.warmup_steps=1",
        "--config.train.log_every=1", "--config.train.eval_every=0",
        "--config.train.checkpoint_every=3", "--config.model.shape.d_model=32",
        "--config.model.shape.num_layers=1", "--config.model.shape.num_heads=2",
        "--config.model.shape.num_kv_heads=2", "--config.model.shape.head_dim=16",
        "--config.model.shape.mlp_dim=64", "--config.model.shape.segment_len=32",
        "--config.seq_len=64", "--config.batch_size=4", "--config.train.peak_flops=1e11"]


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def losses(workdir):
  return [r["train/loss"] for r in metrics.read(str(workdir)) if "train/loss" in r]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  return [f"--config.data.data_dir={tmp_path_factory.mktemp('tfds')}"]


def run_two(workdir, *flags, sigterm_process=None):
  """Both processes of a job; optionally SIGTERM to one of them once process 0 has logged."""
  port = free_port()
  procs = [subprocess.Popen(
      [sys.executable, "train.py", *TINY, *flags, f"--workdir={workdir}",
       f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", f"--process_id={i}"],
      cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
  if sigterm_process is not None:
    deadline = time.time() + 300
    while not os.path.exists(workdir / "metrics.jsonl"):
      assert procs[0].poll() is None and time.time() < deadline, "training ended before SIGTERM"
      time.sleep(0.05)
    procs[sigterm_process].send_signal(signal.SIGTERM)
  outs = [p.communicate(timeout=300)[0] for p in procs]
  return [p.returncode for p in procs], outs


def test_two_processes_match_one(tmp_path, data):
  one = subprocess.run([sys.executable, "train.py", *TINY, *data, f"--workdir={tmp_path / 'one'}"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert one.returncode == 0, one.stderr[-3000:]
  codes, outs = run_two(tmp_path / "two", *data)
  assert codes == [0, 0], outs[0][-3000:] + outs[1][-3000:]
  assert "mesh {'data': 2" in outs[0]  # one global mesh over both processes' devices
  assert "step 1/3" not in outs[1]  # progress is logged once, by process 0
  np.testing.assert_allclose(losses(tmp_path / "two"), losses(tmp_path / "one"), rtol=1e-5)
  assert os.path.isdir(tmp_path / "two" / "checkpoints" / "3")  # written collectively


def test_sigterm_to_one_process_stops_both_at_the_same_step(tmp_path, data):
  # A constant rate after a short warm-up: the losses of the first steps do not depend on
  # train.steps, so the run can be long enough for any delay of the SIGTERM's spreading (about
  # a second) and the reference as short as the steps that were actually run.
  constant = ["--config.optimizer.min_lr_ratio=1.0", "--config.optimizer.warmup_steps=2",
              "--config.train.checkpoint_every=10000"]
  # Only process 1 is told; jax.distributed's preemption sync tells process 0.
  codes, outs = run_two(tmp_path / "run", *data, *constant, "--config.train.steps=5000",
                        sigterm_process=1)
  assert codes == [0, 0], outs[0][-3000:] + outs[1][-3000:]
  said = [re.findall(r"process (\d): SIGTERM: saved the checkpoint of step (\d+)", out)
          for out in outs]
  print(*(line for out in outs for line in out.splitlines() if "SIGTERM" in line), sep="\n")
  assert said[0] == [("0", said[1][0][1])] and said[1] == [("1", said[1][0][1])], outs
  saved = int(said[0][0][1])
  assert os.listdir(tmp_path / "run" / "checkpoints") == [str(saved)]
  assert not (tmp_path / "run" / "final_metrics.json").exists()
  total = [f"--config.train.steps={saved + 3}"]
  codes, outs = run_two(tmp_path / "run", *data, *constant, *total)
  assert codes == [0, 0] and f"resumed from the checkpoint of step {saved}" in outs[0], outs
  codes, outs = run_two(tmp_path / "reference", *data, *constant, *total)
  assert codes == [0, 0], outs[0][-3000:] + outs[1][-3000:]
  # Every step's loss, before the SIGTERM and after the resume, is the uninterrupted run's.
  by_step = {}
  for r in metrics.read(str(tmp_path / "run")):
    if "train/loss" in r:
      by_step.setdefault(r["step"], []).append(r["train/loss"])
  reference = losses(tmp_path / "reference")
  assert sorted(by_step) == list(range(1, saved + 4)) and len(reference) == saved + 3
  for step, values in by_step.items():
    assert values == [reference[step - 1]] * len(values), (step, values, reference[step - 1])
