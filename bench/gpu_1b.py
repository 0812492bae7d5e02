"""The 1b preset's training throughput and MFU on one GPU: 32K tokens, segment 2048, bfloat16.

The real training step (infini_jax.state.build: forward and backward through the segment scan
with remat, AdamW), batch 1 x 32768 tokens (16 segments of 2048), compute in bfloat16 (memory
math, softmax, gate and loss in float32, parameters float32), segment attention through
jax.nn.dot_product_attention (`--attention_impl=xla`, cuDNN flash attention on a GPU). Reports
tokens/s and MFU against the chip's dense bfloat16 peak (H100 SXM and H200: 989 TFLOP/s; H100
PCIe: 756) and against XLA's bfloat16 matmul throughput measured in the same run.
Training FLOPs = 3 x ModelConfig.flops_per_token() (attention as the full segment square;
rematerialisation not counted). Target: MFU >= 40%. Under 5 minutes, compilation included.

  python -m bench.gpu_1b                       # on a GPU machine; writes bench/out/gpu_1b.json
  python -m bench.gpu_1b --attention_impl=blocked --remat=dots   # variants
  python -m bench.gpu_1b --smoke               # anywhere: a shrunken 1b, 2 steps (CPU check)
"""

from __future__ import annotations

import sys
import time

import jax
import jax.numpy as jnp
from absl import app, flags

from bench import common
from infini_jax import peak as peaklib

TARGET = 0.4
# The 1b preset shrunk to compile and run in seconds on a CPU: same code path, same dtypes.
SMOKE = dict(shape=dict(vocab_size=512, d_model=64, num_layers=2, num_heads=4, num_kv_heads=2,
                        head_dim=16, mlp_dim=128, segment_len=64))


def chip_peak(kind: str) -> float | None:
  """The chip's dense bf16 peak from the library's table (infini_jax/peak.py), None if unknown."""
  try:
    return peaklib.chip_peak(kind)
  except ValueError:
    return None


def check_cudnn(seed: int = 0) -> dict:
  """cuDNN's flash attention (attention_impl="xla" on a GPU, bfloat16) against the blocked path on
  the 1b preset's attention shape (one segment of 2048, 32 query heads over 8 kv heads, head 64):
  outputs and q/k/v gradients, with right padding. Prints and returns the largest differences."""
  from infini_jax.local_attention import IMPLEMENTATIONS, uses_cudnn
  B, T, N, K, H = 2, 2048, 32, 8, 64
  keys = jax.random.split(jax.random.key(seed), 4)
  q = jax.random.normal(keys[0], (B, T, N, H), jnp.bfloat16)
  k = jax.random.normal(keys[1], (B, T, K, H), jnp.bfloat16)
  v = jax.random.normal(keys[2], (B, T, K, H), jnp.bfloat16)
  w = jax.random.normal(keys[3], (B, T, N, H))
  mask = jnp.arange(T)[None, :] < jnp.array([[T], [T - 300]])
  real = mask[:, :, None, None]

  def loss(impl, q, k, v):
    out = IMPLEMENTATIONS[impl](q, k, v, mask)
    return jnp.sum(jnp.where(real, out * w, 0.0)), out

  def run(impl):
    return jax.jit(jax.value_and_grad(lambda *a: loss(impl, *a), (0, 1, 2), has_aux=True))(q, k, v)

  (_, out_x), g_x = run("xla")
  (_, out_b), g_b = run("blocked")
  rel = lambda a, b: float(jnp.max(jnp.abs(a.astype(jnp.float32) - b.astype(jnp.float32))) /
                           jnp.max(jnp.abs(b.astype(jnp.float32))))
  result = dict(uses_cudnn=uses_cudnn(q),
                out_max_rel_diff=rel(jnp.where(real, out_x, 0), jnp.where(real, out_b, 0)),
                grad_max_rel_diff=max(rel(a, b) for a, b in zip(g_x, g_b)))
  print(f"cuDNN check: used {result['uses_cudnn']}; largest difference from the blocked path, "
        f"relative to its largest value: outputs {result['out_max_rel_diff']:.2e}, gradients "
        f"{result['grad_max_rel_diff']:.2e} (bfloat16 inputs)", flush=True)
  return result


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  args = flags.FLAGS

  device = jax.devices()[0]
  overrides = dict(attention_impl=args.attention_impl, remat=args.remat)
  if args.smoke:
    overrides.update(SMOKE)
    args.seq_len, args.steps = 4 * SMOKE["segment_len"], 2
  elif device.platform != "gpu":
    sys.exit(f"bench.gpu_1b needs a GPU (H100/H200): JAX sees {device.platform} "
             f"({device.device_kind}). Run it on a GPU machine with jax[cuda12] installed, or "
             "pass --smoke to check the construction on this machine.")

  check = None if args.smoke or args.attention_impl != "xla" else check_cudnn()
  start = time.perf_counter()
  step = common.TrainStep("1b", args.seq_len, batch=args.batch, **overrides)
  compile_s = time.perf_counter() - start
  cfg = step.model_cfg
  print(f"1b preset{' (smoke: shrunk)' if args.smoke else ''}: {step.setup.num_params / 1e6:,.1f}M "
        f"parameters, {args.batch} x {args.seq_len} tokens, segment {cfg.shape.segment_len}, "
        f"dtype {cfg.dtype}, attention {cfg.attention_impl}, remat {cfg.remat}; compiled in "
        f"{compile_s:.0f} s, XLA plans {step.planned_bytes / 2**30:.1f} GiB", flush=True)
  step.allocate()
  for _ in range(2):
    metrics = step()
  loss = float(metrics["loss"])
  start = time.perf_counter()
  for _ in range(args.steps):
    metrics = step()
  jax.block_until_ready(metrics)
  seconds = (time.perf_counter() - start) / args.steps

  flops = 3 * cfg.flops_per_token() * step.tokens
  peak = None if args.smoke else chip_peak(device.device_kind)
  measured = peaklib.PeakProbe(n=512 if args.smoke else 8192, dtype=jnp.bfloat16)()
  result = dict(
      preset="1b", smoke=args.smoke, device_kind=device.device_kind, seq_len=args.seq_len,
      batch=args.batch, segment_len=cfg.shape.segment_len, dtype=cfg.dtype,
      attention_impl=cfg.attention_impl, remat=cfg.remat, num_params=step.setup.num_params,
      compile_s=compile_s, step_s=seconds, tokens_per_s=step.tokens / seconds,
      train_flops_per_token=3 * cfg.flops_per_token(), achieved_flops=flops / seconds,
      chip_peak_flops=peak, mfu=flops / seconds / peak if peak else None,
      measured_matmul_peak_flops=measured, mfu_vs_measured=flops / seconds / measured,
      loss=loss, target=TARGET, cudnn_check=check)
  stats = getattr(device, "memory_stats", lambda: None)() or {}
  if "peak_bytes_in_use" in stats:
    result["peak_bytes_in_use"] = stats["peak_bytes_in_use"]
  print(f"{device.device_kind}: {result['tokens_per_s']:,.0f} tokens/s, {seconds:.3f} s/step, "
        f"{result['achieved_flops'] / 1e12:.1f} TFLOP/s; MFU "
        + (f"{result['mfu']:.1%} of {peak / 1e12:.0f} TFLOP/s (target {TARGET:.0%}), " if peak
           else "n/a (unknown chip peak), ")
        + f"{result['mfu_vs_measured']:.1%} of the measured bf16 matmul peak "
        f"{measured / 1e12:.1f} TFLOP/s; loss {loss:.3f}", flush=True)
  name = "gpu_1b_smoke" if args.smoke else "gpu_1b"
  print("wrote", common.write(name, result))


def define_flags():
  flags.DEFINE_integer("seq_len", 32768, "Tokens per sequence.")
  flags.DEFINE_integer("batch", 1, "Sequences per step.")
  flags.DEFINE_enum("attention_impl", "xla", ["xla", "blocked"], "Segment attention: cuDNN through "
                    "jax.nn.dot_product_attention (xla) or the blocked path.")
  flags.DEFINE_enum("remat", "full", ["full", "dots", "none"], "Rematerialisation per segment.")
  flags.DEFINE_integer("steps", 5, "Timed steps, after 2 warm-up steps.")
  flags.DEFINE_bool("smoke", False, "A shrunken 1b preset, 4 segments, 2 steps: runs on a CPU.")
  flags.DEFINE_bool("quick", False, "The same as the default (make bench passes it).")


if __name__ == "__main__":
  define_flags()
  app.run(main)
