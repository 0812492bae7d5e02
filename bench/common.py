"""Shared measuring tools for the benchmarks: the peak around a timed section, timing, compiled
memory, output.

These machines are shared and noisy: every comparison is timed side by side in one process
(`interleaved`: round-robin, best of each), and a peak used for MFU is measured right before and
right after the timed section (`Bracket`), reporting both. The peak itself is the library's
(infini_jax/peak.py: PeakProbe on CPU), the one the training log divides by.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import platform
import time
from typing import Callable

import jax
import numpy as np

from infini_jax import peak as peaklib
from infini_jax.peak import PeakProbe, timed as _timed

# glibc malloc settings that keep freed large buffers mapped, so a step's big temporaries are not
# fresh (page-faulting) mmaps every time. MALLOC_ARENA_MAX=1 is the one that makes the others
# apply to XLA, whose worker threads would otherwise allocate from per-thread arenas, where
# large requests are always mmapped. See bench/studies/malloc.py for what they are worth here.
MALLOC_ENV = {"MALLOC_ARENA_MAX": "1", "MALLOC_MMAP_THRESHOLD_": "4294967296",
              "MALLOC_TRIM_THRESHOLD_": "68719476736", "MALLOC_TOP_PAD_": "1073741824"}

OUT_DIR = os.environ.get("BENCH_OUT", os.path.join(os.path.dirname(__file__), "out"))


def time_call(fn: Callable, *args, repeats: int = 3) -> float:
  """Best wall time of fn(*args) over `repeats` runs after one warm-up (compilation) run."""
  jax.block_until_ready(fn(*args))
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    best = min(best, time.perf_counter() - start)
  return best


def peak_probe() -> Callable[[], float]:
  """The peak as infini_jax.peak defines it for the default device, as a callable: on CPU the
  matmul probe (measured again at each call), on TPU and GPU the chip's published bf16 peak."""
  device = jax.devices()[0]
  if device.platform == "cpu":
    return PeakProbe()
  published = peaklib.chip_peak(device.device_kind)
  return lambda: published


@dataclasses.dataclass
class Bracket:
  """The matmul peak measured right before and right after a timed section:
  `with Bracket() as b: ...`, then b.peak (the higher: the machine was at least that fast)."""

  before: float = 0.0
  after: float = 0.0

  def __enter__(self):
    self._probe = peak_probe()
    self.before = self._probe()
    return self

  def __exit__(self, *exc):
    self.after = self._probe()

  @property
  def peak(self) -> float:
    return max(self.before, self.after)

  @property
  def spread(self) -> float:
    """|before - after| / max: how much the machine's speed moved during the section."""
    return abs(self.before - self.after) / self.peak

  def as_dict(self) -> dict:
    return dict(peak_flops=self.peak, peak_before=self.before, peak_after=self.after,
                peak_spread=self.spread)


def bracketed(runs: dict[str, Callable[[], object]], rounds: int = 3) -> dict[str, dict]:
  """Times each callable `rounds` times, round-robin, with the matmul peak measured between every
  two timed calls, so that each call has a peak right before and right after it.

  Per run: its best call's time and that call's bracketing peaks (`peak_flops` the higher of
  the two, `peak_spread` their difference relative to it), and `best_peak_flops`, the highest
  peak seen during the whole measurement (the conservative denominator). Warm up first.
  """
  probe = peak_probe()
  samples = {name: [] for name in runs}
  peaks = [probe()]
  for _ in range(rounds):
    for name, fn in runs.items():
      seconds = _timed(fn)
      peaks.append(probe())
      samples[name].append((peaks[-2], seconds, peaks[-1]))
  out = {}
  for name, rows in samples.items():
    before, seconds, after = min(rows, key=lambda r: r[1])
    out[name] = dict(step_s=seconds, peak_before=before, peak_after=after,
                     peak_flops=max(before, after),
                     peak_spread=abs(before - after) / max(before, after),
                     best_peak_flops=max(peaks), samples=rows)
  return out


def interleaved(runs: dict[str, Callable[[], object]], rounds: int = 3) -> dict[str, float]:
  """Best wall time of each zero-argument callable, timed round-robin `rounds` times.

  Round-robin puts the runs of every variant close together in time, so a burst of load from
  another process hits them alike; the best time is the least disturbed one. Warm up first.
  """
  best = {name: float("inf") for name in runs}
  for _ in range(rounds):
    for name, fn in runs.items():
      start = time.perf_counter()
      jax.block_until_ready(fn())
      best[name] = min(best[name], time.perf_counter() - start)
  return best


def available_bytes() -> int:
  """MemAvailable of this machine (Linux), or 16 GiB when unknown."""
  try:
    with open("/proc/meminfo") as f:
      for line in f:
        if line.startswith("MemAvailable:"):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  return 16 * 2**30


class TrainStep:
  """The real training step (infini_jax.state.build: AdamW, donated state) of one model preset,
  compiled for one (batch, length) on one device; `planned_bytes` before anything is allocated.

    step = TrainStep("demo", seq_len=8192, memory="xl")
    if step.planned_bytes < budget:
      step.allocate(); step()   # one optimizer step on random tokens
  """

  def __init__(self, preset: str, seq_len: int, batch: int = 1, memory: str = "infini",
               **model_overrides):
    from infini_jax import config as configlib
    from infini_jax import sharding as sh
    from infini_jax import state as statelib

    c = configlib.defaults(preset, memory=memory, **model_overrides)
    if memory == "full":
      c.model.shape.segment_len = seq_len  # one segment: ordinary causal attention
    c.seq_len, c.batch_size = seq_len, batch
    c.train.steps = 10**6  # the schedule's length; no warm-up effects on the timing
    self.model_cfg = configlib.validate(c, device_count=1)
    self.mesh = sh.make_mesh(c.mesh, jax.devices()[:1])
    self.setup = statelib.build(c, self.model_cfg, self.mesh)
    self.tokens = batch * seq_len
    self._ctx = lambda: _contexts(self.mesh, sh.use_rules(self.setup.rules))
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (batch, seq_len + 1)).astype(np.int32)
    self._host_batch = dict(inputs=x[:, :-1], targets=x[:, 1:],
                            mask=np.ones((batch, seq_len), bool),
                            weights=np.ones((batch, seq_len), np.float32))
    abstract_batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=self.setup.batch_sharding)
                      for k, v in self._host_batch.items()}
    with self._ctx():
      lowered = self.setup.train_step.lower(self.setup.abstract_state, abstract_batch)
      self.compiled = lowered.compile()
    m = self.compiled.memory_analysis()
    self.planned_bytes = int(m.argument_size_in_bytes + m.output_size_in_bytes +
                             m.temp_size_in_bytes - m.alias_size_in_bytes)
    self.state = self.batch = None

  def allocate(self, seed: int = 0) -> "TrainStep":
    with self._ctx():
      self.state = self.setup.init(jax.random.key(seed))
      self.batch = self.setup.global_batch(self._host_batch)
    return self

  def __call__(self):
    self.state, metrics = self.compiled(self.state, self.batch)
    return metrics

  def release(self):
    self.state = self.batch = None


def _contexts(mesh, rules_ctx):
  stack = contextlib.ExitStack()
  stack.enter_context(jax.set_mesh(mesh))
  stack.enter_context(rules_ctx)
  return stack


def compiled_bytes(jitted, *args) -> int:
  """Peak bytes XLA plans for one call: arguments + outputs + temporaries."""
  m = jitted.lower(*args).compile().memory_analysis()
  return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes)


def out_path(filename: str) -> str:
  os.makedirs(OUT_DIR, exist_ok=True)
  return os.path.join(OUT_DIR, filename)


def pyplot():
  """matplotlib's pyplot on the Agg backend (no display needed)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def save_with_legend_below(fig, path: str, ncol: int, bottom: float) -> None:
  """Saves fig with its axes' legend in one block under the plot, `bottom` of the height kept
  free for it (the legends are long: inside the axes they would hide the curves)."""
  handles, labels = fig.axes[0].get_legend_handles_labels()
  fig.legend(handles, labels, loc="lower center", ncol=ncol, fontsize=7, frameon=False)
  fig.tight_layout(rect=(0, bottom, 1, 1))
  fig.savefig(path, dpi=120)


def write(name: str, result: dict) -> str:
  os.makedirs(OUT_DIR, exist_ok=True)
  result = dict(result, device=str(jax.devices()[0].device_kind), cpus=os.cpu_count(),
                jax=jax.__version__, python=platform.python_version())
  path = os.path.join(OUT_DIR, f"{name}.json")
  with open(path, "w") as f:
    json.dump(result, f, indent=2)
  return path
