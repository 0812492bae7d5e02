"""Two processes on localhost (jax.distributed, CPU collectives) train like one process."""

import os
import socket
import subprocess
import sys

import numpy as np

from infini_jax import metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--config=configs/demo.py:runlocal", "--config.data.subset=small",
        "--config.train.steps=3", "--config.optimizer.warmup_steps=1",
        "--config.train.log_every=1", "--config.train.eval_every=0",
        "--config.train.checkpoint_every=3", "--config.model.d_model=32",
        "--config.model.num_layers=1", "--config.model.num_heads=2", "--config.model.num_kv_heads=2",
        "--config.model.head_dim=16", "--config.model.mlp_dim=64", "--config.model.segment_len=32",
        "--config.seq_len=64", "--config.batch_size=4", "--config.train.peak_flops=1e11"]


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def losses(workdir):
  return [r["train/loss"] for r in metrics.read(str(workdir)) if "train/loss" in r]


def test_two_processes_match_one(tmp_path):
  data = [f"--config.data.data_dir={tmp_path / 'tfds'}"]
  one = subprocess.run([sys.executable, "train.py", *TINY, *data, f"--workdir={tmp_path / 'one'}"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert one.returncode == 0, one.stderr[-3000:]
  port = free_port()
  procs = [subprocess.Popen(
      [sys.executable, "train.py", *TINY, *data, f"--workdir={tmp_path / 'two'}",
       f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", f"--process_id={i}"],
      cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
  outs = [p.communicate(timeout=300)[0] for p in procs]
  assert [p.returncode for p in procs] == [0, 0], outs[0][-3000:] + outs[1][-3000:]
  assert "mesh {'data': 2" in outs[0]  # one global mesh over both processes' devices
  assert "step 1/3" not in outs[1]  # progress is logged once, by process 0
  np.testing.assert_allclose(losses(tmp_path / "two"), losses(tmp_path / "one"), rtol=1e-5)
  assert os.path.isdir(tmp_path / "two" / "checkpoints" / "3")  # written collectively
