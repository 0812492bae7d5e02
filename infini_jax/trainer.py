"""train_and_evaluate(config, workdir): the whole training run, top to bottom.

Sections: setup, data, model and optimizer, restore, the step, the loop (log, evaluate,
checkpoint). The train state is a plain pytree {step, params, opt_state} of arrays, parameters as
nnx pure dicts, so it jits, donates and checkpoints without any module objects in the way.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from infini_jax import config as configlib
from infini_jax import evaluate, metrics, optim
from infini_jax.checkpoint import Checkpointer
from infini_jax.data import pipeline
from infini_jax.model import InfiniTransformer


class NonFiniteError(RuntimeError):
  """The loss or the gradient of a step was NaN or infinite."""


def make_train_step(graphdef, tx, lr_schedule, grad_accum: int):
  """train_step(state, batch) -> (state, metrics): one optimizer step over grad_accum micro-batches.

  The loss is the mean over real (mask True) target tokens of the whole global batch, whatever the
  split into micro-batches.
  """

  def micro_loss(params, micro):
    model = nnx.merge(graphdef, params)
    nll, _ = model.nll(micro["inputs"], micro["targets"], mask=micro["mask"])
    return nll.sum(), micro["mask"].sum()

  def train_step(state, batch):
    params = state["params"]
    micro = jax.tree.map(lambda x: x.reshape(grad_accum, -1, *x.shape[1:]), batch)

    def accumulate(carry, micro_batch):
      grads, loss, count = carry
      (l, n), g = jax.value_and_grad(micro_loss, has_aux=True)(params, micro_batch)
      return (jax.tree.map(jnp.add, grads, g), loss + l, count + n), None

    zeros = jax.tree.map(jnp.zeros_like, params)
    (grads, loss, count), _ = jax.lax.scan(accumulate, (zeros, 0.0, 0), micro)
    count = jnp.maximum(count, 1).astype(jnp.float32)
    grads = jax.tree.map(lambda g: g / count, grads)
    updates, opt_state = tx.update(grads, state["opt_state"], params)
    new_state = dict(step=state["step"] + 1, params=optax.apply_updates(params, updates),
                     opt_state=opt_state)
    return new_state, dict(loss=loss / count, grad_norm=optax.tree.norm(grads),
                           lr=lr_schedule(state["step"]))

  return train_step


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
  total = config.train.steps

  # --- Data: this process's share of each global batch. ---
  pipeline.prepare_from_config(config.data, config.seq_len)
  train_iter = pipeline.make_train_iterator(
      config.data, config.seq_len, model_cfg.segment_len, config.batch_size, config.seed,
      jax.process_index(), jax.process_count())

  # --- Model and optimizer: shapes first, then allocation. ---
  abstract_model = nnx.eval_shape(lambda: InfiniTransformer(model_cfg, rngs=nnx.Rngs(0)))
  graphdef, _ = nnx.split(abstract_model)
  tx, lr_schedule = optim.make(config.optimizer, total)

  @jax.jit
  def init_state(key):
    model = InfiniTransformer(model_cfg, rngs=nnx.Rngs(params=key))
    params = nnx.to_pure_dict(nnx.state(model))
    return dict(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))

  abstract_state = jax.eval_shape(init_state, jax.random.key(config.seed))
  num_params = sum(x.size for x in jax.tree.leaves(abstract_state["params"]))

  # --- Restore, or start fresh. ---
  start = ckpt.latest_step()
  if start is not None:
    state, data_state = ckpt.restore(abstract_state)
    train_iter.set_state(data_state)
    logging.info("resumed from step %d in %s", start, ckpt.directory)
    print(f"resumed from the checkpoint of step {start} in {ckpt.directory}", flush=True)
  else:
    state, start = init_state(jax.random.key(config.seed)), 0

  # --- The step. ---
  train_step = jax.jit(make_train_step(graphdef, tx, lr_schedule, config.optimizer.grad_accum),
                       donate_argnums=0)
  tokens_per_step = config.batch_size * config.seq_len
  peak = config.train.peak_flops or _measured_peak()
  progress = metrics.Progress(total, start, tokens_per_step, 3 * model_cfg.flops_per_token(), peak)
  print(f"model {config.model_name}: {num_params / 1e6:.2f}M parameters, memory={model_cfg.memory}"
        f" rule={model_cfg.rule}, segment {model_cfg.segment_len}, training length "
        f"{config.seq_len}, batch {config.batch_size}; steps {start}..{total}", flush=True)

  def eval_model():
    return nnx.merge(graphdef, state["params"])

  def run_evals(step):
    results = evaluate.run_all(evaluators, eval_model())
    writer.write(step, {f"eval/{k}": v for k, v in results.items()})
    summary = ", ".join(f"{k} {v:.4g}" for k, v in results.items() if "/gate/" not in k)
    print(f"eval at step {step}: {summary}", flush=True)
    return results

  # --- The loop. ---
  preempted = _Preempted()
  step, last = start, {}
  try:
    while step < total:
      batch = next(train_iter)
      state, step_metrics = train_step(state, batch)
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
      if preempted.requested:
        print(f"SIGTERM: saved the checkpoint of step {step} in {ckpt.directory}; exiting",
              flush=True)
        break
  finally:
    preempted.restore()
    ckpt.close()
    writer.close()
  with open(os.path.join(workdir, "final_metrics.json"), "w") as f:
    json.dump(dict(step=step, **last), f, indent=2)
  return dict(step=step, **last)


def _measured_peak() -> float:
  """XLA's float32 matmul throughput here, the denominator of the MFU estimate."""
  n, reps = 1024, 4
  a = jnp.ones((n, n), jnp.float32)
  f = jax.jit(lambda a: sum(jnp.dot(a + i, a) for i in range(reps)))
  f(a).block_until_ready()
  t = time.perf_counter()
  f(a).block_until_ready()
  return reps * 2 * n ** 3 / (time.perf_counter() - t)
