"""Model-FLOPs utilisation of the training step against the training log's peak (on CPU, XLA's
matmul peak, measured alongside).

Workloads:
  demo        the demo experiment's training step (configs/demo.py: batch 8 x 512 tokens, segment
              128; infini_jax.state.build's jitted step: forward, backward, AdamW), remat `full`
              (the preset's), `dots` and `none`, attention_impl `blocked` and `xla`
  layer       bench/layer.py's shape: one Infini-attention layer, d_model 512, 8 heads of 64,
              segment 1024, 8192 tokens, forward + backward, remat `full` and `dots`
  swiglu      the demo's SwiGLU alone on one segment (8 x 128 tokens, d 128, FFN 384, from the
              preset), forward + backward, no remat, 20 calls in a row: the three matmuls at the
              shape the demo step runs them, so the best the demo step could reach with matmuls
              of that size
  skeleton    the demo step's matmuls and nothing else (bench/studies/skeleton.py): every
              product of the model on its shape, in the same segment scan and remat, without
              norms, softmax, masks, RoPE, features or AdamW: the bound on the demo step's MFU
              at this shape

FLOPs (2 per multiply-add, matmuls only, written out in ModelConfig.flops_per_token and
infini_jax.flops.layer_flops_per_token), per token, forward:
  model   L·[2·D·(N·H + 2·K·H) + 2·N·H·D  +  4·T·N·H  +  2·N·H·H + 2·N·H + 2·K·H·H  +  6·D·F]
          + 2·D·W  (projections q, k, v, o; segment attention as the full T x T square; memory
          read and write; SwiGLU; unembedding)
  layer   2·D·3·N·H + 2·N·H·D + 4·T·N·H + 4·N·H·H + 2·N·H
tests/test_flops.py holds both to the matmuls the code runs, counted in its jaxpr.
training = 3 x forward. Rematerialisation's recomputed forward is not counted (MFU, not HFU): with
remat `full` the hardware runs 4 x forward, so HFU = 4/3 MFU.

The peak is the one the training log divides by (infini_jax/peak.py): on CPU, XLA's float32
matmul throughput (PeakProbe: 2048 x 2048 products), measured between every two timed steps; on
TPU and GPU, the chip's published dense bf16 peak. MFU is infini_jax.peak.mfu, the log's formula.
The workloads are timed round-robin (common.bracketed). For each, the best step and the peaks
right before and after it: MFU uses the higher of the two, and their spread is reported (on a
shared machine it says how far to trust the figure). Also reported: MFU against the highest peak
seen during the whole run (conservative). Target: MFU >= 60%.

  python -m bench.mfu                # writes bench/out/mfu.json and mfu.png
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from absl import app, flags
from flax import nnx

from bench import common
from bench import layer as layerbench
from bench.studies import skeleton
from configs import models
from infini_jax import peak as peaklib
from infini_jax.model import MLP

TARGET = 0.6


DEMO_BATCH, DEMO_LEN = 8, 512  # the demo experiment's batch (configs/demo.py)
SWIGLU_CALLS = 20  # one call lasts ~5 ms: timing 20 keeps the peak probe's cold caches and the
                   # dispatch out of the figure, as they are out of the demo's segment scan


def demo_step(**overrides):
  step = common.TrainStep("demo", DEMO_LEN, batch=DEMO_BATCH, **overrides).allocate()
  return step, step.tokens, 3 * step.model_cfg.flops_per_token()


def layer_step(remat: str):
  m = layerbench.make_layer("infini")
  params, run = layerbench.scanned(m, layerbench.T, remat)
  x = jax.random.normal(jax.random.key(1), (layerbench.B, layerbench.L, layerbench.D))
  f = jax.jit(jax.value_and_grad(lambda p, x: jnp.sum(run(p, x) ** 2), argnums=(0, 1)))
  return (lambda: f(params, x)), layerbench.B * layerbench.L, 3 * layerbench.flops_per_token(
      layerbench.T, memory=True)


def skeleton_step(remat: str):
  cfg = dataclasses.replace(models.PRESETS["demo"], remat=remat)
  step = skeleton.train_step(cfg)
  state = {"params": skeleton.init(cfg, jax.random.key(0))}
  tokens = jax.random.randint(jax.random.key(1), (DEMO_BATCH, DEMO_LEN), 0, cfg.shape.vocab_size)

  def run():
    state["params"], loss = step(state["params"], tokens)
    return loss
  return run, DEMO_BATCH * DEMO_LEN, 3 * cfg.flops_per_token()


def swiglu_step():
  cfg = models.PRESETS["demo"]
  D, F, T = cfg.shape.d_model, cfg.shape.mlp_dim, cfg.shape.segment_len
  m = MLP(D, F, jnp.float32, jnp.float32, nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(1), (DEMO_BATCH, T, D))
  graphdef, params = nnx.split(m)
  f = jax.jit(jax.value_and_grad(lambda p, x: jnp.sum(nnx.merge(graphdef, p)(x) ** 2), (0, 1)))

  def run():
    for _ in range(SWIGLU_CALLS):
      out = f(params, x)
    return out
  return run, SWIGLU_CALLS * DEMO_BATCH * T, 3 * 6 * D * F  # SwiGLU's 6·D·F, training 3x


WORKLOADS = {
    "demo, remat full, blocked": lambda: demo_step(),
    "demo, remat dots, blocked": lambda: demo_step(remat="dots"),
    "demo, remat none, blocked": lambda: demo_step(remat="none"),
    "demo, remat full, xla attention": lambda: demo_step(attention_impl="xla"),
    "layer, remat full": lambda: layer_step("full"),
    "layer, remat dots": lambda: layer_step("dots"),
    "swiglu, demo segment shape": swiglu_step,
    "demo matmuls alone, remat full": lambda: skeleton_step("full"),
    "demo matmuls alone, remat none": lambda: skeleton_step("none"),
}
QUICK = ("demo, remat full, blocked", "layer, remat full")


def measure(names, rounds: int) -> list[dict]:
  built = {}
  for name in names:
    fn, tokens, flops_per_token = WORKLOADS[name]()
    jax.block_until_ready(fn())  # compile and first touch
    jax.block_until_ready(fn())
    built[name] = (fn, tokens, flops_per_token)
  timings = common.bracketed({name: b[0] for name, b in built.items()}, rounds)
  return [row(name, tokens, flops_per_token, timings[name])
          for name, (_, tokens, flops_per_token) in built.items()]


def row(name: str, tokens: int, flops_per_token: float, timing: dict) -> dict:
  """One workload's figures from its common.bracketed timing: MFU as the training log takes it
  (infini_jax.peak.mfu), against the peak around its best step and the run's best peak."""
  tokens_per_s = tokens / timing["step_s"]
  return dict(name=name, tokens_per_s=tokens_per_s, train_flops_per_token=flops_per_token,
              achieved_flops=tokens_per_s * flops_per_token,
              mfu=peaklib.mfu(tokens_per_s, flops_per_token, timing["peak_flops"]),
              conservative_mfu=peaklib.mfu(tokens_per_s, flops_per_token,
                                           timing["best_peak_flops"]), **timing)


def plot(rows: list[dict], path: str) -> None:
  plt = common.pyplot()
  fig, ax = plt.subplots(figsize=(7, 1.2 + 0.4 * len(rows)))
  y = range(len(rows))
  ax.barh([i - 0.2 for i in y], [r["mfu"] for r in rows], height=0.4, color="tab:blue",
          label="vs the peak around its best step")
  ax.barh([i + 0.2 for i in y], [r["conservative_mfu"] for r in rows], height=0.4,
          color="tab:gray", label="vs the best peak of the run")
  for i, r in enumerate(rows):
    ax.text(r["mfu"] + 0.01, i - 0.2, f"{r['mfu']:.0%} (peak spread {r['peak_spread']:.0%})",
            va="center", fontsize=7)
    ax.text(r["conservative_mfu"] + 0.01, i + 0.2, f"{r['conservative_mfu']:.0%}", va="center",
            fontsize=7)
  ax.axvline(TARGET, color="tab:red", ls="--", label="target 60%")
  ax.set_yticks(list(y), [r["name"] for r in rows], fontsize=8)
  ax.invert_yaxis()
  ax.set_xlim(0, 1)
  ax.set_xlabel("training MFU against XLA's float32 matmul peak")
  common.save_with_legend_below(fig, path, ncol=3, bottom=0.07)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  args = flags.FLAGS
  names = QUICK if args.quick else tuple(WORKLOADS)
  rows = measure(names, args.rounds)
  for r in rows:
    print(f"{r['name']:32s} {r['tokens_per_s']:7.0f} tok/s {r['achieved_flops'] / 1e9:6.1f} "
          "GFLOP/s;"
          f" peak around its best step {r['peak_before'] / 1e9:.0f} -> {r['peak_after'] / 1e9:.0f} "
          f"GFLOP/s (spread {r['peak_spread']:.0%}): MFU {r['mfu']:.1%}; against the run's best "
          f"peak {r['best_peak_flops'] / 1e9:.0f}: {r['conservative_mfu']:.1%}", flush=True)
  path = common.write("mfu", dict(target=TARGET, rows=rows))
  plot(rows, common.out_path("mfu.png"))
  print("wrote", path, "and mfu.png")


def define_flags():
  flags.DEFINE_bool("quick", False, "Time the default settings only.")
  flags.DEFINE_integer("rounds", 4, "Timed calls of each workload; the best one counts.")


if __name__ == "__main__":
  define_flags()
  app.run(main)
