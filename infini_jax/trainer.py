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


class _Preemption:
  """Whether to save and stop after a step, the same step on every process.

  Multi-process: jax.distributed's preemption sync service catches SIGTERM (its handler is
  installed by jax.distributed.initialize) and tells every process; orbax's reached_preemption
  then names one step at which all of them save. Single process: a SIGTERM handler sets a flag
  that the loop checks after each step.
  """

  def __init__(self, ckpt: Checkpointer):
    self.ckpt, self.requested, self.previous = ckpt, False, None
    self.synced = jax.process_count() > 1 and jax.config.jax_enable_preemption_service
    if not self.synced:  # a Python handler would replace the sync service's
      self.previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True

  def reached(self, step: int) -> bool:
    """Call after every step, on every process."""
    return self.ckpt.reached_preemption(step) if self.synced else self.requested

  def restore(self):
    if self.previous is not None:
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
        config.data, config.seq_len, model_cfg.shape.segment_len, config.batch_size, shuffle_seed,
        jax.process_index(), jax.process_count())

    # --- Restore, or start fresh. ---
    start = ckpt.latest_step()
    if start is not None:  # the newest checkpoint that restores (a corrupted one is set aside)
      state, data_state, start = ckpt.restore_latest(setup.abstract_state)
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
        f"memory={model_cfg.memory} rule={model_cfg.infini.rule}, segment "
        f"{model_cfg.shape.segment_len}, training length "
        f"{config.seq_len}, batch {config.batch_size}, mesh {dict(setup.mesh.shape)}; steps "
        f"{start}..{total}", flush=True)

  def run_evals(step):
    results = evaluate.run_all(evaluators, setup.model(state["params"]))
    writer.write(step, {f"eval/{k}": v for k, v in results.items()})
    summary = ", ".join(f"{k} {v:.4g}" for k, v in results.items() if "/gate/" not in k)
    print(f"eval at step {step}: {summary}", flush=True)
    return results

  # --- The loop. ---
  # The host reads the loss and gradient norm only at log steps and before saves (a read waits
  # for the device); `unread` holds the metrics of the steps since, still on the device.
  step, last, first, unread = start, {}, {}, []
  if start == 0 and config.train.eval_every:
    first = run_evals(0)  # the untrained model's figures, for the summary to compare against
  preemption = _Preemption(ckpt)
  try:
    while step < total:
      batch = setup.global_batch(next(train_iter))
      state, step_metrics = setup.train_step(state, batch)
      step += 1
      unread.append(step_metrics)
      preempted = preemption.reached(step)
      saving = step % config.train.checkpoint_every == 0 or step == total or preempted
      if saving or step % config.train.log_every == 0:
        values = _read_finite(unread, step, ckpt)  # never save a non-finite state
        unread = []
      if step % config.train.log_every == 0 or step == total:
        loss, grad_norm = values["loss"], values["grad_norm"]
        last = dict(loss=loss, ppl=evaluate.perplexity(loss), lr=values["lr"],
                    grad_norm=grad_norm, **progress.report(step))
        writer.write(step, {f"train/{k}": v for k, v in last.items()})
        print(f"step {step}/{total}  loss {loss:.4f}  ppl {last['ppl']:.3f}  lr {last['lr']:.2e}  "
              f"|g| {grad_norm:.3f}  {last['tokens_per_s']:.0f} tok/s  mfu {last['mfu']:.1%}  "
              f"eta {metrics.duration(last['eta_s'])}", flush=True)
      if saving:  # returns once the arrays are off the devices; orbax writes in the background
        if not bool(_all_finite(state)):  # a finite loss does not rule out an update to inf
          raise NonFiniteError(f"the state after step {step} has non-finite values; "
                               + _stopped(ckpt))
        ckpt.save(step, state, train_iter.get_state())
      if config.train.eval_every and (step % config.train.eval_every == 0 or step == total):
        last.update({f"eval/{k}": v for k, v in run_evals(step).items()})
      if saving or config.train.eval_every and step % config.train.eval_every == 0:
        progress.reset_clock(step)
      if step == start + 1:
        progress.reset_clock(step)  # the first step's time is mostly compilation
      if preempted:
        ckpt.wait()  # complete on disk before anyone is told it is saved
        # Every process says so: on a pod each host's log shows that it stopped, and where.
        _print_everywhere(f"SIGTERM: saved the checkpoint of step {step} in {ckpt.directory}; "
                          "exiting")
        break
  finally:
    preemption.restore()
    ckpt.close()  # waits for a save in progress
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


def _read_finite(unread: list[dict], step: int, ckpt: Checkpointer) -> dict[str, float]:
  """Loss, gradient norm and rate of `step`, read in one transfer with those of every unread step
  before it (steps step-len(unread)+1..step); a NonFiniteError names the first non-finite one."""
  values = jax.device_get([{k: m[k] for k in ("loss", "grad_norm", "lr")} for m in unread])
  first = step - len(values) + 1
  for i, v in enumerate(values):
    loss, grad_norm = float(v["loss"]), float(v["grad_norm"])
    if not (np.isfinite(loss) and np.isfinite(grad_norm)):
      raise NonFiniteError(
          f"non-finite loss ({loss}) or gradient norm ({grad_norm}) at step {first + i} (steps "
          f"{first}..{step}, read at step {step}); " + _stopped(ckpt))
  return {k: float(x) for k, x in values[-1].items()}


def _stopped(ckpt: Checkpointer) -> str:
  """The end of a NonFiniteError: what is on disk, and what to do."""
  good = ckpt.wait()  # every saved state was checked: any complete checkpoint is good
  return ("stopped without saving. Last good checkpoint: "
          f"{'none' if good is None else f'step {good} in {ckpt.directory}'}; lower "
          "optimizer.lr or raise optimizer.warmup_steps and rerun.")


@jax.jit
def _all_finite(state) -> jax.Array:
  """Whether every float in the train state is finite (one pass over it, before each save)."""
  leaves = [x for x in jax.tree.leaves(state) if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.stack([jnp.isfinite(x).all() for x in leaves]))


def _print_everywhere(text: str) -> None:
  """A line from every process, prefixed with its index where there are several."""
  prefix = f"process {jax.process_index()}: " if jax.process_count() > 1 else ""
  print(prefix + text, flush=True)


def _print(*args, **kwargs) -> None:
  if jax.process_index() == 0:
    print(*args, **kwargs)
