"""A preset's matmul FLOPs counted in its jaxpr (infini_jax/flops.py), against the formula.

From the command line, a preset's forward and training step (loss gradient, remat included)
counted for each batch size, from shapes alone (nothing is allocated, any preset on any machine):

  python -m bench.flops --preset=1b --seq_len=32768 --batches=1,2 --dtype=bfloat16
"""

from __future__ import annotations

import argparse
import dataclasses

from infini_jax.flops import step_flops


def main(argv=None):
  from configs import models

  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--preset", default="demo", choices=sorted(models.PRESETS))
  parser.add_argument("--seq_len", type=int, default=512)
  parser.add_argument("--batches", default="8", help="comma-separated batch sizes")
  parser.add_argument("--attention_impl", choices=("blocked", "xla"))
  parser.add_argument("--remat", choices=("full", "dots", "none"))
  parser.add_argument("--dtype", choices=("float32", "bfloat16"))
  args = parser.parse_args(argv)
  overrides = {k: getattr(args, k) for k in ("attention_impl", "remat", "dtype")
               if getattr(args, k) is not None}
  cfg = dataclasses.replace(models.PRESETS[args.preset], **overrides)
  for batch in (int(b) for b in args.batches.split(",")):
    f = step_flops(cfg, batch, args.seq_len)
    print(f"{args.preset} batch {batch} x {args.seq_len}: forward {f['forward'] / 1e9:,.2f} GFLOP "
          f"(formula {f['formula'] / 1e9:,.2f}), loss and gradient {f['train'] / 1e9:,.2f} GFLOP "
          f"= {f['train'] / f['forward']:.2f}x forward (remat {cfg.remat})")


if __name__ == "__main__":
  main()
