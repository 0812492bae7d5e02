"""Shared measuring tools for the benchmarks: a matmul peak, timing, compiled memory, output."""

from __future__ import annotations

import json
import os
import platform
import time
from typing import Callable

import jax
import jax.numpy as jnp

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


def matmul_peak_flops(n: int = 2048, dtype=jnp.float32) -> float:
  """XLA's float32 matmul throughput on this machine (FLOP/s): the denominator of MFU."""
  a = jax.random.normal(jax.random.key(0), (n, n), dtype)
  b = jax.random.normal(jax.random.key(1), (n, n), dtype)
  reps = 8
  f = jax.jit(lambda a, b: sum(jnp.dot(a + i, b) for i in range(reps)))
  return reps * 2 * n ** 3 / time_call(f, a, b, repeats=5)


def compiled_bytes(jitted, *args) -> int:
  """Peak bytes XLA plans for one call: arguments + outputs + temporaries."""
  m = jitted.lower(*args).compile().memory_analysis()
  return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes)


def write(name: str, result: dict) -> str:
  os.makedirs(OUT_DIR, exist_ok=True)
  result = dict(result, device=str(jax.devices()[0].device_kind), cpus=os.cpu_count(),
                jax=jax.__version__, python=platform.python_version())
  path = os.path.join(OUT_DIR, f"{name}.json")
  with open(path, "w") as f:
    json.dump(result, f, indent=2)
  return path
