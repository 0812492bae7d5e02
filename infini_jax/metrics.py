"""Where metrics go: one progress line on stdout, JSON lines and TensorBoard events in the workdir."""

from __future__ import annotations

import json
import os
import sys
import time

from infini_jax import peak as peaklib

# tensorboardX imports PyTorch whenever it is installed, to accept its tensors; we hand it Python
# floats only, and importing torch costs 2-3 s at every start of train.py on a machine that has it
# (most ML machines do). `import torch` raises ImportError while sys.modules["torch"] is None;
# whoever needs torch later (the converter) imports it as usual.
_HIDE_TORCH = "torch" not in sys.modules
if _HIDE_TORCH:
  sys.modules["torch"] = None
try:
  from tensorboardX import SummaryWriter
finally:
  if _HIDE_TORCH:
    del sys.modules["torch"]


class MetricWriter:
  """Writes scalars to WORKDIR/metrics.jsonl and WORKDIR/tensorboard (on the main process)."""

  def __init__(self, workdir: str, enabled: bool = True):
    self.enabled = enabled
    self.path = os.path.join(workdir, "metrics.jsonl")
    if enabled:
      os.makedirs(workdir, exist_ok=True)
      self.tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def write(self, step: int, scalars: dict[str, float]) -> None:
    if not self.enabled:
      return
    with open(self.path, "a") as f:
      f.write(json.dumps({"step": step, **{k: float(v) for k, v in scalars.items()}}) + "\n")
    for k, v in scalars.items():
      self.tb.add_scalar(k, float(v), step)
    self.tb.flush()

  def close(self) -> None:
    if self.enabled:
      self.tb.close()


def read(workdir: str) -> list[dict]:
  """All rows of WORKDIR/metrics.jsonl, in the order written."""
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def duration(seconds: float) -> str:
  seconds = int(seconds)
  return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
  """Tokens/s, MFU and ETA over the steps since the previous report.

  MFU is infini_jax.peak.mfu, as in bench/mfu.py: for the same step time, the same FLOPs per
  token and the same peak (infini_jax.peak.job_peak), the log and the benchmark agree.
  """

  def __init__(self, total_steps: int, start_step: int, tokens_per_step: int,
               flops_per_token: float, peak_flops: float):
    self.total, self.tokens_per_step = total_steps, tokens_per_step
    self.flops_per_token, self.peak = flops_per_token, peak_flops
    self.last_step, self.last_time = start_step, time.perf_counter()

  def report(self, step: int) -> dict[str, float]:
    now = time.perf_counter()
    dt = max(now - self.last_time, 1e-9)
    tokens_per_s = (step - self.last_step) * self.tokens_per_step / dt
    out = dict(tokens_per_s=tokens_per_s,
               mfu=peaklib.mfu(tokens_per_s, self.flops_per_token, self.peak),
               eta_s=(self.total - step) * dt / max(step - self.last_step, 1))
    self.last_step, self.last_time = step, now
    return out

  def reset_clock(self, step: int) -> None:
    """Forget time spent outside training (compilation, evaluation, checkpointing)."""
    self.last_step, self.last_time = step, time.perf_counter()
