"""The peak FLOP/s that model-FLOPs utilisation (MFU) divides by: one definition for the training
log and for the benchmarks.

  on TPU and GPU: the chip's published dense bfloat16 peak (CHIP_PEAKS, by `device_kind`);
  on CPU:         XLA's float32 matmul throughput, measured here (PeakProbe: 4 products of
                  2048 x 2048, best of 2 timed calls; about a second, compilation included).

A chip missing from the table is an error that says how to give its peak
(`--config.train.peak_flops`), not a silent fallback to a measured figure: a measured matmul rate
is not the figure MFU is quoted against on accelerators, and the two would not compare.

  peak.job_peak()            # the whole job's peak: every chip, or every host's CPU
  peak.device_peak(device)   # one device's
  mfu = peak.mfu(tokens_per_s, flops_per_token, peak.job_peak())
"""

from __future__ import annotations

import time
from typing import Callable

import jax
import jax.numpy as jnp

# Dense (no structured sparsity) bfloat16 peak per chip, FLOP/s, keyed by jax's `device_kind`.
# TPUs: the exact `device_kind` strings (v5e reports "TPU v5 lite", v5p "TPU v5",
# v6e "TPU v6 lite").
TPU_PEAKS = {
    "TPU v4": 275e12,  # cloud.google.com/tpu/docs/v4: peak compute per chip (bf16) 275 TFLOPs
    "TPU v5 lite": 197e12,  # cloud.google.com/tpu/docs/v5e: peak compute per chip (bf16) 197
    "TPU v5e": 197e12,
    "TPU v5": 459e12,  # cloud.google.com/tpu/docs/v5p: peak compute per chip (bf16) 459 TFLOPs
    "TPU v5p": 459e12,
    "TPU v6 lite": 918e12,  # cloud.google.com/tpu/docs/v6e: peak compute per chip (bf16) 918
    "TPU v6e": 918e12,
}
# NVIDIA GPUs: a substring of `device_kind` ("NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-40GB"),
# the first match wins, so the specific forms come before "H100" and "H200". NVIDIA's data sheets
# quote bf16 "with sparsity"; the dense peak is half of that.
GPU_PEAKS = (
    ("H100 PCIe", 756e12),  # nvidia.com/en-us/data-center/h100: H100 PCIe 1,513 sparse
    ("H100 NVL", 835e12),  # nvidia.com/en-us/data-center/h100: H100 NVL 1,671 sparse
    ("H100", 989e12),  # nvidia.com/en-us/data-center/h100: H100 SXM 1,979 sparse
    ("GH200", 989e12),  # nvidia.com/en-us/data-center/grace-hopper-superchip: 1,979 sparse
    ("H200 NVL", 835e12),  # nvidia.com/en-us/data-center/h200: H200 NVL 1,671 sparse
    ("H200", 989e12),  # nvidia.com/en-us/data-center/h200: H200 SXM 1,979 sparse
    ("A100", 312e12),  # nvidia.com/en-us/data-center/a100: BF16 Tensor Core 312 (624 sparse)
)


def chip_peak(kind: str) -> float:
  """The published dense bf16 peak (FLOP/s) of one accelerator chip, by its `device_kind`."""
  if kind in TPU_PEAKS:
    return TPU_PEAKS[kind]
  for name, peak in GPU_PEAKS:
    if name.lower() in kind.lower():
      return peak
  raise ValueError(f"no published bf16 peak for device_kind {kind!r}: give the chip's dense "
                   "bf16 FLOP/s times the number of chips with --config.train.peak_flops=..., "
                   "or add the chip to infini_jax/peak.py")


class PeakProbe:
  """XLA's matmul throughput (FLOP/s) on the default device: 4 products of n x n, best of 2
  calls, compiled once at construction, so that it can be called again between timed steps."""

  def __init__(self, n: int = 2048, dtype=jnp.float32):
    self.flops = 4 * 2 * n ** 3
    a = jax.random.normal(jax.random.key(0), (n, n), dtype)
    b = jax.random.normal(jax.random.key(1), (n, n), dtype)
    # `a + i`: four distinct products, which XLA cannot fold into one.
    f = jax.jit(lambda a, b: sum(jnp.dot(a + i, b) for i in range(4)))
    self._run = lambda: f(a, b)
    jax.block_until_ready(self._run())

  def __call__(self) -> float:
    return self.flops / min(timed(self._run) for _ in range(2))


def timed(fn: Callable) -> float:
  """Wall seconds of fn(), its result awaited."""
  start = time.perf_counter()
  jax.block_until_ready(fn())
  return time.perf_counter() - start


def measured_peak(calls: int = 2) -> float:
  """The CPU's float32 matmul peak as the benchmarks take it around a timed section: the higher
  of `calls` probe calls (a shared machine is at least that fast)."""
  probe = PeakProbe()
  return max(probe() for _ in range(calls))


def device_peak(device=None) -> float:
  """One device's peak FLOP/s: published for TPU and GPU, measured for CPU."""
  device = device or jax.devices()[0]
  if device.platform == "cpu":
    return measured_peak()
  return chip_peak(device.device_kind)


def job_peak() -> float:
  """The whole job's peak: every accelerator chip's, or every host's CPU (a CPU process's devices
  share its cores, so the measured peak counts once per process, not per device)."""
  device = jax.devices()[0]
  if device.platform == "cpu":
    return measured_peak() * jax.process_count()
  return chip_peak(device.device_kind) * jax.device_count()


def mfu(tokens_per_s: float, flops_per_token: float, peak_flops: float) -> float:
  """Model-FLOPs utilisation: achieved model FLOP/s over the peak (the log's and the bench's)."""
  return tokens_per_s * flops_per_token / peak_flops
