"""The optimizer: AdamW or Adafactor, warm-up then cosine decay, global-norm clipping.

The memory path's gates (every `GateParam`: β and the options' per-head parameters) get their own
learning rate (a multiple of the base one) and no weight decay: a public reproduction stalled
because its gates, decayed towards 0 and updated at the base rate, never left sigmoid(β) = 0.5
(PAPER.md).
"""

from __future__ import annotations

import jax
import optax
from flax import nnx

from infini_jax.memories.common import GateParam

OPTIMIZERS = ("adamw", "adafactor")


def schedule(cfg, steps: int) -> optax.Schedule:
  """Linear warm-up from 0 to cfg.lr, then cosine decay to cfg.lr * cfg.min_lr_ratio."""
  warmup = min(cfg.warmup_steps, max(steps - 1, 0))
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=cfg.lr, warmup_steps=warmup, decay_steps=max(steps, warmup + 1),
      end_value=cfg.lr * cfg.min_lr_ratio)


def param_labels(model) -> dict:
  """'gate' for every `GateParam` of a model (or of its nnx.State), 'default' for every other
  parameter: a pure dict shaped like the model's parameters, for `make`."""
  state = model if isinstance(model, nnx.State) else nnx.state(model, nnx.Param)
  return nnx.to_pure_dict(jax.tree.map(
      lambda v: "gate" if isinstance(v, GateParam) else "default", state,
      is_leaf=lambda v: isinstance(v, nnx.Variable)))


def _base(cfg, lr, weight_decay: float) -> optax.GradientTransformation:
  if cfg.name == "adamw":
    return optax.adamw(lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=weight_decay)
  return optax.adafactor(lr, multiply_by_parameter_scale=False, weight_decay_rate=weight_decay or None)


def make(cfg, steps: int, labels) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """The optimizer for parameters shaped like `labels` (`param_labels`), and its schedule."""
  if cfg.name not in OPTIMIZERS:
    raise ValueError(f"unknown optimizer.name {cfg.name!r}; use one of {OPTIMIZERS}")
  lr = schedule(cfg, steps)
  gate_lr = lambda step: lr(step) * cfg.gate_lr_mult  # noqa: E731
  tx = optax.chain(
      optax.clip_by_global_norm(cfg.clip_norm),
      optax.multi_transform(
          {"default": _base(cfg, lr, cfg.weight_decay), "gate": _base(cfg, gate_lr, 0.0)},
          labels),
  )
  return tx, lr
