"""What JAX sees on this machine: `python -m infini_jax.devices` (or `make devices`).

Prints the JAX version, the default backend, and each kind of device with its count, platform and
memory where the runtime reports it: a quick check that an accelerator install
(requirements-tpu.txt, requirements-cuda.txt) took, before a run is launched on it.
"""

from __future__ import annotations

import collections

import jax


def describe() -> list[str]:
  devices = jax.devices()
  lines = [f"jax {jax.__version__}, backend {jax.default_backend()}: {len(devices)} device(s), "
           f"{jax.local_device_count()} on this process ({jax.process_count()} processes)"]
  kinds = collections.Counter((d.platform, d.device_kind) for d in devices)
  for (platform, kind), count in kinds.items():
    first = next(d for d in devices if d.device_kind == kind)
    try:
      stats = first.memory_stats() or {}
    except Exception:  # noqa: BLE001 (CPU and some plugins report none)
      stats = {}
    limit = stats.get("bytes_limit")
    memory = f", {limit / 2**30:.2f} GiB each" if limit else ""
    lines.append(f"  {count} x {kind} ({platform}){memory}")
  return lines


if __name__ == "__main__":
  print("\n".join(describe()))
