"""Logical axis names, the rules that map them to mesh axes, and the mesh itself.

Parameters are annotated with logical names where they are created (attention.py, model.py);
activations and memory states are constrained through `constrain`. Only this file and the rules
table in the config know about devices: the same model code runs on one CPU, on 8 fake devices
and on a pod.

Mesh axes: data (pure data parallelism), fsdp (data parallelism with parameters and optimizer
state split across it), tensor (heads and the feed-forward width split across it).
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Iterable, Sequence

import jax
import jax.numpy as jnp
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

BATCH = "batch"
LENGTH = "length"
EMBED = "embed"
HEADS = "heads"
KV_HEADS = "kv_heads"
HEAD_DIM = "head_dim"
MLP = "mlp"
VOCAB = "vocab"
LAYERS = "layers"

LOGICAL_AXES = (BATCH, LENGTH, EMBED, HEADS, KV_HEADS, HEAD_DIM, MLP, VOCAB, LAYERS)
MESH_AXES = ("data", "fsdp", "tensor")

# Logical name -> mesh axis (or axes, or None for replicated). The configs copy this table.
DEFAULT_RULES = (
    (BATCH, ("data", "fsdp")),
    (EMBED, "fsdp"),
    (HEADS, "tensor"),
    (KV_HEADS, "tensor"),
    (MLP, "tensor"),
    (VOCAB, "tensor"),
    (LENGTH, None),
    (HEAD_DIM, None),
    (LAYERS, None),
)

_active_rules: dict[str, Any] | None = None


def check_rules(rules: Iterable[Sequence]) -> dict[str, Any]:
  """The rules as a dict, refusing unknown logical names and unknown mesh axes."""
  out = {}
  for row in rules:
    name, axes = row[0], row[1]
    if name not in LOGICAL_AXES:
      raise ValueError(f"sharding rule for unknown logical axis {name!r}; known: {LOGICAL_AXES}")
    axes = tuple(axes) if isinstance(axes, (list, tuple)) else axes
    for a in (axes if isinstance(axes, tuple) else (axes,)):
      if a is not None and a not in MESH_AXES:
        raise ValueError(f"sharding rule {name!r} -> unknown mesh axis {a!r}; use {MESH_AXES}")
    out[name] = axes
  return out


def mesh_shape(mesh_cfg, device_count: int) -> tuple[int, int, int]:
  """(data, fsdp, tensor) with a -1 entry taking the remaining devices."""
  sizes = [int(mesh_cfg[a]) for a in MESH_AXES]
  fixed = math.prod(s for s in sizes if s != -1)
  if sizes.count(-1) > 1 or any(s == 0 or s < -1 for s in sizes) or device_count % fixed or (
      -1 not in sizes and fixed != device_count):
    raise ValueError(
        f"mesh data={sizes[0]}, fsdp={sizes[1]}, tensor={sizes[2]} does not match the "
        f"{device_count} devices; their product must equal it (at most one axis may be -1)")
  return tuple(device_count // fixed if s == -1 else s for s in sizes)


def make_mesh(mesh_cfg, devices: Sequence[jax.Device] | None = None) -> Mesh:
  devices = jax.devices() if devices is None else list(devices)
  shape = mesh_shape(mesh_cfg, len(devices))
  # Auto axes: the compiler propagates shardings from the annotations (GSPMD style).
  try:
    return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)
  except NotImplementedError as e:  # jax cannot lay these axis sizes on the physical torus
    raise ValueError(f"mesh data={shape[0]}, fsdp={shape[1]}, tensor={shape[2]} cannot be laid "
                     f"on these devices' physical torus: each axis size must be a product of "
                     f"the torus's axis sizes ({str(e).split('remaining assignable mesh ')[-1][:20]}"
                     "...); pick sizes such as 4 or 16 on a 4x4x4 slice") from None


def spec(names: Sequence[str | None], rules: dict[str, Any]) -> P:
  """Logical names -> PartitionSpec of mesh axes."""
  return P(*(None if n is None else rules.get(n) for n in names))


def named(mesh: Mesh, names: Sequence[str | None] | None, rules: dict[str, Any],
          shape: Sequence[int] | None = None, what: str = "array") -> NamedSharding:
  """The NamedSharding of an array with logical axis `names`; checks that it divides evenly."""
  pspec = spec(names or (), rules)
  if shape is not None:
    for dim, axes in zip(shape, pspec):
      size = math.prod(mesh.shape[a] for a in (axes if isinstance(axes, tuple) else (axes,))
                       if a is not None)
      if dim % size:
        raise ValueError(
            f"{what} of shape {tuple(shape)} (logical axes {tuple(names)}) does not split: "
            f"{dim} over mesh axes {axes} of size {size}; change the mesh or the sharding rules")
  return NamedSharding(mesh, pspec)


@contextlib.contextmanager
def use_rules(rules: dict[str, Any]):
  """Within this context `constrain` applies the rules (needs an active mesh: jax.set_mesh)."""
  global _active_rules
  previous, _active_rules = _active_rules, rules
  try:
    yield
  finally:
    _active_rules = previous


def active_rules() -> dict[str, Any] | None:
  """The rules of the innermost `use_rules`, or None outside it."""
  return _active_rules


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
  """Pins an activation's sharding by logical names; a no-op outside `use_rules` and a mesh."""
  if _active_rules is None or jax.sharding.get_abstract_mesh().empty:
    return x
  return jax.lax.with_sharding_constraint(x, spec(names, _active_rules))


def param_shardings(abstract_state, mesh: Mesh, rules: dict[str, Any]):
  """NamedShardings for an nnx.State of annotated variables, as a pure dict like the params."""
  from flax import nnx  # local: keeps this file importable without building a model

  def one(path, var):
    names = var.get_metadata().get("out_sharding") or (None,) * len(var.shape)
    return named(mesh, names, rules, var.shape, what="parameter " + jax.tree_util.keystr(path))

  flat = {path: one(path, var) for path, var in nnx.to_flat_state(abstract_state)}
  return nnx.to_pure_dict(nnx.from_flat_state(flat))


def batch_sharding(mesh: Mesh, rules: dict[str, Any], global_batch: int) -> NamedSharding:
  return named(mesh, (BATCH, LENGTH), rules, (global_batch, 1), what="the global batch")


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def _axes(entry) -> tuple:
  return tuple(a for a in (entry if isinstance(entry, tuple) else (entry,)) if a is not None)


def lookup(table: jax.Array, tokens: jax.Array) -> jax.Array:
  """table[tokens]: an embedding lookup [V, D], [B, T] -> [B, T, D] whose gradient reaches the
  table's shards without an all-reduce of the whole table.

  Why: with the batch split over (data, fsdp) and the table's D over fsdp alone, XLA gathered the
  table's gradient whole on every chip and all-reduced it, in every segment (tests/test_aot.py).
  Pinned here, each chip looks up its slice of D for the tokens of its data group (the ids
  gathered over fsdp), and one all-to-all over fsdp gives back the batch split; the gradient
  retraces those steps, and the data axis all-reduces only each chip's [V, D / fsdp] shard.
  A plain take outside `use_rules`.
  """
  if _active_rules is None or jax.sharding.get_abstract_mesh().empty:
    return jnp.take(table, tokens, axis=0)
  table_spec = spec((VOCAB, EMBED), _active_rules)
  embed_axes = _axes(table_spec[1])
  group = tuple(a for a in _axes(_active_rules.get(BATCH)) if a not in embed_axes) or None
  tokens = jax.lax.with_sharding_constraint(tokens, P(group, None))
  x = jnp.take(jax.lax.with_sharding_constraint(table, table_spec), tokens, axis=0)
  x = jax.lax.with_sharding_constraint(x, P(group, None, table_spec[1]))
  return jax.lax.with_sharding_constraint(x, spec((BATCH, LENGTH, None), _active_rules))
