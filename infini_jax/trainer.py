"""train_and_evaluate(config, workdir): the whole training run, top to bottom.

Sections: setup, mesh, data, model and optimizer (infini_jax/state.py), restore, the loop (log,
evaluate, checkpoint). Multi-host: every process runs this same function; each reads only its
share of the global batch, and orbax writes and reads checkpoints collectively.
"""

from __future__ import annotations

import json
import os
import signal
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from infini_jax import config as configlib
from infini_jax import evaluate, metrics
from infini_jax import peak as peaklib
from infini_jax import sharding as sh
from infini_jax import state as statelib
from infini_jax.checkpoint import Checkpointer, restore_init_params
from infini_jax.data import pipeline


class NonFiniteError(RuntimeError):
  """The loss or the gradient of a step was NaN or infinite."""


class _Preempted:
  """Turns SIGTERM into a flag the loop checks after each step (save, then exit cleanly)."""

  def __init__(self):
    self.requested = False
    self.previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True

  def restore(self):
    signal.signal(signal.SIGTERM, self.previous)


def train_and_evaluate(config, workdir: str) -> dict[str, float]:
  """Trains (resuming from WORKDIR/checkpoints if present); returns the final metrics."""
  # --- Setup: validate everything before any work. ---
  model_cfg = configlib.validate(config, jax.device_count(), jax.process_count())
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write(config.to_json_best_effort(indent=2))
  evaluators = evaluate.from_config(config)
  writer = metrics.MetricWriter(workdir, enabled=jax.process_index() == 0)
  ckpt = Checkpointer(workdir, config.train.keep_checkpoints)

  # --- Mesh, model and optimizer: shapes and shardings first, then allocation. ---
  mesh = sh.make_mesh(config.mesh)
  setup = statelib.build(config, model_cfg, mesh)  # outside the mesh: shardings are explicit
  with jax.set_mesh(mesh), sh.use_rules(setup.rules):

    # --- Data: this process's share of each global batch. ---
    if jax.process_index() == 0:
      pipeline.prepare_from_config(config.data, config.seq_len)
    multihost_utils.sync_global_devices("data prepared")
    shuffle_seed = config.seed if config.data.shuffle_seed == -1 else config.data.shuffle_seed
    train_iter = pipeline.make_train_iterator(
        config.data, config.seq_len, model_cfg.segment_len, config.batch_size, shuffle_seed,
        jax.process_index(), jax.process_count())

    # --- Restore, or start fresh. ---
    start = ckpt.latest_step()
    if start is not None:
      state, data_state = ckpt.restore(setup.abstract_state)
      train_iter.set_state(data_state)
      _print(f"resumed from the checkpoint of step {start} in {ckpt.directory}", flush=True)
    else:
      state, start = setup.init(jax.random.key(config.seed)), 0
      if config.init_from:  # continual pre-training: a converted LLM's or another run's weights
        state["params"], note = restore_init_params(config.init_from, state["params"],
                                                    setup.memory_params)
        # Optimizer state from the restored values (Adam's moments are zeros either way).
        state["opt_state"] = jax.jit(setup.tx.init, out_shardings=setup.state_shardings[
            "opt_state"])(state["params"])
        _print(note, flush=True)
    return _loop(config, workdir, setup, state, start, train_iter, ckpt, evaluators, writer)


def _loop(config, workdir, setup, state, start, train_iter, ckpt, evaluators, writer):
  model_cfg, total = setup.model_cfg, config.train.steps
  print = _print  # noqa: A001 (one progress log per job, from process 0)
  tokens_per_step = config.batch_size * config.seq_len
  # MFU's denominator: the whole job's peak, as bench/mfu.py takes it (infini_jax/peak.py).
  peak = config.train.peak_flops or peaklib.job_peak()
  progress = metrics.Progress(total, start, tokens_per_step, 3 * model_cfg.flops_per_token(), peak)
  print(f"model {config.model_name}: {setup.num_params / 1e6:.2f}M parameters, "
        f"memory={model_cfg.memory} rule={model_cfg.rule}, segment {model_cfg.segment_len}, training length "
        f"{config.seq_len}, batch {config.batch_size}, mesh {dict(setup.mesh.shape)}; steps "
        f"{start}..{total}", flush=True)

  def run_evals(step):
    results = evaluate.run_all(evaluators, setup.model(state["params"]))
    writer.write(step, {f"eval/{k}": v for k, v in results.items()})
    summary = ", ".join(f"{k} {v:.4g}" for k, v in results.items() if "/gate/" not in k)
    print(f"eval at step {step}: {summary}", flush=True)
    return results

  # --- The loop. ---
  step, last, first = start, {}, {}
  if start == 0 and config.train.eval_every:
    first = run_evals(0)  # the untrained model's figures, for the summary to compare against
  preempted = _Preempted()
  try:
    while step < total:
      batch = setup.global_batch(next(train_iter))
      state, step_metrics = setup.train_step(state, batch)
      step += 1
      loss, grad_norm = float(step_metrics["loss"]), float(step_metrics["grad_norm"])
      if not (np.isfinite(loss) and np.isfinite(grad_norm)):
        good = ckpt.latest_step()
        raise NonFiniteError(
            f"non-finite loss ({loss}) or gradient norm ({grad_norm}) at step {step}; stopped "
            f"without saving. Last good checkpoint: "
            f"{'none' if good is None else f'step {good} in {ckpt.directory}'}; lower "
            "optimizer.lr or raise optimizer.warmup_steps and rerun.")
      if step % config.train.log_every == 0 or step == total:
        last = dict(loss=loss, ppl=float(np.exp(loss)), lr=float(step_metrics["lr"]),
                    grad_norm=grad_norm, **progress.report(step))
        writer.write(step, {f"train/{k}": v for k, v in last.items()})
        print(f"step {step}/{total}  loss {loss:.4f}  ppl {last['ppl']:.3f}  lr {last['lr']:.2e}  "
              f"|g| {grad_norm:.3f}  {last['tokens_per_s']:.0f} tok/s  mfu {last['mfu']:.1%}  "
              f"eta {metrics.duration(last['eta_s'])}", flush=True)
      saving = step % config.train.checkpoint_every == 0 or step == total or preempted.requested
      if saving:
        ckpt.save(step, state, train_iter.get_state())
      if config.train.eval_every and (step % config.train.eval_every == 0 or step == total):
        last.update({f"eval/{k}": v for k, v in run_evals(step).items()})
      if saving or config.train.eval_every and step % config.train.eval_every == 0:
        progress.reset_clock(step)
      if step == start + 1:
        progress.reset_clock(step)  # the first step's time is mostly compilation
      if preempted.requested:
        print(f"SIGTERM: saved the checkpoint of step {step} in {ckpt.directory}; exiting",
              flush=True)
        break
  finally:
    preempted.restore()
    ckpt.close()
    writer.close()
  if step < total:  # preempted: no final_metrics.json, which tells scripts the run is complete
    return dict(step=step, **last)
  with open(os.path.join(workdir, "final_metrics.json"), "w") as f:
    json.dump(dict(step=step, **last), f, indent=2)
  if "eval/perplexity/ppl" in last:
    before = f" (step 0: {first['perplexity/ppl']:.2f})" if "perplexity/ppl" in first else ""
    print(f"done: step {step}, held-out perplexity {last['eval/perplexity/ppl']:.3f}{before}; "
          f"checkpoints in {ckpt.directory}, metrics in {writer.path} and "
          f"{os.path.join(workdir, 'tensorboard')}", flush=True)
  return dict(step=step, **last)


def _print(*args, **kwargs) -> None:
  if jax.process_index() == 0:
    print(*args, **kwargs)
