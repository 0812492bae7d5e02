"""The training-step stall around a checkpoint save: blocking (save, then wait for the files)
against asynchronous (infini_jax.checkpoint.Checkpointer: the step goes on while orbax writes).

A model of 134.8M parameters (d_model 1024, 8 layers, FFN 4096, byte vocabulary; with the AdamW
state, 1.51 GiB saved each time), batch 1 x 128 tokens, the trainer's jitted step
(infini_jax.state.build). Three phases of `--steps` steps in one process, the same data:
  none      no saves
  blocking  a save every `--every` steps, waited for at once (what Checkpointer.save did before)
  async     a save every `--every` steps, Checkpointer.save as the trainer calls it, and one wait
            at the end (counted)
Each step is timed to block_until_ready (the trainer does not wait; the bench must, to attribute
time to steps). A save is counted in the time of the step it follows. Reported per phase: mean
step time of the steps with a save and of those without, and the whole phase's time over the
no-save phase's (the stall per save, background writing's contention included). The phases run
one after another: on a shared machine a change of load between them shows in the totals, so
compare a phase's steps with and without a save first.

  nice python -m bench.checkpoint     # a few minutes on 2 cores; writes bench/out/checkpoint.json
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import jax
import numpy as np

from bench import common
from infini_jax import config as configlib
from infini_jax import sharding as sh
from infini_jax import state as statelib
from infini_jax.checkpoint import Checkpointer


def build(d_model: int, layers: int):
  heads = d_model // 128 or 1
  c = configlib.defaults("tiny", shape=dict(d_model=d_model, num_layers=layers, num_heads=heads,
                                            num_kv_heads=heads, head_dim=min(d_model, 128),
                                            mlp_dim=4 * d_model, segment_len=128))
  c.seq_len, c.batch_size = 128, 1
  model_cfg = configlib.validate(c, 1)
  mesh = sh.make_mesh(c.mesh, jax.devices()[:1])
  return c, mesh, statelib.build(c, model_cfg, mesh)


def run_phase(setup, state, batch, steps: int, every: int, mode: str, workdir: str):
  """(state, per-step seconds, whether each step had a save, total seconds incl. the last wait)."""
  ckpt = Checkpointer(workdir, keep=1) if mode != "none" else None
  times, saved = [], []
  start = time.perf_counter()
  for i in range(1, steps + 1):
    t = time.perf_counter()
    state, m = setup.train_step(state, batch)
    jax.block_until_ready((state, m))
    save = mode != "none" and i % every == 0
    if save:
      ckpt.save(i, state, {"position": i})
      if mode == "blocking":
        ckpt.wait()
    times.append(time.perf_counter() - t)
    saved.append(save)
  if ckpt is not None:
    ckpt.close()  # waits for the last save
  return state, np.array(times), np.array(saved), time.perf_counter() - start


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--steps", type=int, default=12)
  parser.add_argument("--every", type=int, default=4)
  parser.add_argument("--d_model", type=int, default=1024)
  parser.add_argument("--layers", type=int, default=8)
  args = parser.parse_args()
  c, mesh, setup = build(args.d_model, args.layers)
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, 256, (c.batch_size, c.seq_len + 1)).astype(np.int32)
  raw = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:],
         "mask": np.ones((c.batch_size, c.seq_len), bool),
         "weights": np.ones((c.batch_size, c.seq_len), np.float32)}
  with jax.set_mesh(mesh), sh.use_rules(setup.rules), tempfile.TemporaryDirectory() as tmp:
    state = setup.init(jax.random.key(0))
    batch = setup.global_batch(raw)
    state_bytes = sum(x.nbytes for x in jax.tree.leaves(state))
    print(f"{setup.num_params / 1e6:.1f}M parameters, {state_bytes / 2**30:.2f} GiB of state "
          f"saved; {args.steps} steps per phase, a save every {args.every}", flush=True)
    state, _ = setup.train_step(state, batch)  # compile
    jax.block_until_ready(state)
    results = {}
    for mode in ("none", "blocking", "async"):
      state, times, saved, total = run_phase(setup, state, batch, args.steps, args.every, mode,
                                             os.path.join(tmp, mode))
      results[mode] = dict(
          mean_step_s=float(times[~saved].mean()),
          mean_step_with_save_s=float(times[saved].mean()) if saved.any() else None,
          total_s=total, saves=int(saved.sum()))
    base = results["none"]["mean_step_s"] * args.steps
    for mode in ("blocking", "async"):
      r = results[mode]
      r["stall_per_save_s"] = (r["total_s"] - base) / r["saves"]
    print(f"{'phase':<9} {'step, no save':>14} {'step + save':>12} {'phase total':>12} "
          f"{'stall per save':>15}")
    for mode, r in results.items():
      with_save = f"{r['mean_step_with_save_s']:.3f} s" if r["mean_step_with_save_s"] else "-"
      stall = f"{r['stall_per_save_s']:.3f} s" if "stall_per_save_s" in r else "-"
      print(f"{mode:<9} {r['mean_step_s']:>12.3f} s {with_save:>12} {r['total_s']:>10.2f} s "
            f"{stall:>15}")
  common.write("checkpoint", dict(params=setup.num_params, state_bytes=state_bytes,
                                       steps=args.steps, every=args.every, results=results))


if __name__ == "__main__":
  main()
