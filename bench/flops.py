"""A preset's matmul FLOPs counted in its jaxpr (infini_jax/flops.py), against the formula.

From the command line, a preset's forward and training step (loss gradient, remat included)
counted for each batch size, from shapes alone (nothing is allocated, any preset on any machine):

  python -m bench.flops --preset=1b --seq_len=32768 --batches=1,2 --dtype=bfloat16
"""

from __future__ import annotations

import dataclasses

from absl import app, flags

from infini_jax.flops import step_flops


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from configs import models  # noqa: PLC0415

  args = flags.FLAGS
  overrides = {k: getattr(args, k) for k in ("attention_impl", "remat", "dtype")
               if getattr(args, k) is not None}
  cfg = dataclasses.replace(models.PRESETS[args.preset], **overrides)
  for batch in (int(b) for b in args.batches.split(",")):
    f = step_flops(cfg, batch, args.seq_len)
    print(f"{args.preset} batch {batch} x {args.seq_len}: forward {f['forward'] / 1e9:,.2f} GFLOP "
          f"(formula {f['formula'] / 1e9:,.2f}), loss and gradient {f['train'] / 1e9:,.2f} GFLOP "
          f"= {f['train'] / f['forward']:.2f}x forward (remat {cfg.remat})")


def define_flags():
  from configs import models

  flags.DEFINE_enum("preset", "demo", sorted(models.PRESETS), "Model preset to count.")
  flags.DEFINE_integer("seq_len", 512, "Tokens per sequence.")
  flags.DEFINE_string("batches", "8", "Comma-separated batch sizes, each counted on its own.")
  flags.DEFINE_enum("attention_impl", None, ["blocked", "xla"], "Override the preset's attention.")
  flags.DEFINE_enum("remat", None, ["full", "dots", "none"], "Override the preset's remat.")
  flags.DEFINE_enum("dtype", None, ["float32", "bfloat16"], "Override the preset's compute dtype.")


if __name__ == "__main__":
  define_flags()
  app.run(main)
