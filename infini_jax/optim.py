"""The optimizer: AdamW or Adafactor, warm-up then cosine decay, global-norm clipping.

The gates β get their own learning rate (a multiple of the base one) and no weight decay: a public
reproduction stalled because its gates, decayed towards 0 and updated at the base rate, never left
sigmoid(β) = 0.5 (PAPER.md).
"""

from __future__ import annotations

import jax
import optax

OPTIMIZERS = ("adamw", "adafactor")


def schedule(cfg, steps: int) -> optax.Schedule:
  """Linear warm-up from 0 to cfg.lr, then cosine decay to cfg.lr * cfg.min_lr_ratio."""
  warmup = min(cfg.warmup_steps, max(steps - 1, 0))
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=cfg.lr, warmup_steps=warmup, decay_steps=max(steps, warmup + 1),
      end_value=cfg.lr * cfg.min_lr_ratio)


GATES = ("gate", "gate_w", "memory_scale", "write_gate_w", "write_gate_b", "memory_decay")


def is_gate(path) -> bool:
  """Whether a pytree path (of a pure dict or an nnx.State) leads to a gate β, or to the other
  per-head parameters of the memory path (model.memory_scale's log-scale, model.write_gate's
  weights, model.memory_decay's logits, model.query_gate's weights): same rate, no weight decay."""
  return any(getattr(k, "key", getattr(k, "name", None)) in GATES for k in path)


def param_labels(params):
  """'gate' for every β, 'default' for everything else (a pytree shaped like params)."""
  return jax.tree_util.tree_map_with_path(lambda p, _: "gate" if is_gate(p) else "default", params)


def _base(cfg, lr, weight_decay: float) -> optax.GradientTransformation:
  if cfg.name == "adamw":
    return optax.adamw(lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=weight_decay)
  return optax.adafactor(lr, multiply_by_parameter_scale=False, weight_decay_rate=weight_decay or None)


def make(cfg, steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """The optimizer (for a pytree of parameters) and its learning-rate schedule."""
  if cfg.name not in OPTIMIZERS:
    raise ValueError(f"unknown optimizer.name {cfg.name!r}; use one of {OPTIMIZERS}")
  lr = schedule(cfg, steps)
  gate_lr = lambda step: lr(step) * cfg.gate_lr_mult  # noqa: E731
  tx = optax.chain(
      optax.clip_by_global_norm(cfg.clip_norm),
      optax.multi_transform(
          {"default": _base(cfg, lr, cfg.weight_decay), "gate": _base(cfg, gate_lr, 0.0)},
          param_labels),
  )
  return tx, lr
