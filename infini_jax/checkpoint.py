"""Orbax checkpoints of the whole training state: parameters, optimizer, step and data iterator.

Layout: WORKDIR/checkpoints/STEP/{state, data}. `state` is a pytree of arrays (restored into an
abstract target, so it lands with the shapes, dtypes and shardings the caller asks for); `data`
is the grain iterator's JSON state, so a resumed run reads exactly the batches it would have read.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from flax import traverse_util
from jax.experimental import multihost_utils


class Checkpointer:
  """Saves in the background: `save` returns once the arrays are copied off the devices, and
  orbax writes the files while training goes on.

  When a checkpoint counts as saved: orbax writes step N into a temporary folder and renames it
  to checkpoints/N only once every file is written, so a folder N means a complete checkpoint
  that a SIGKILL cannot undo. `wait()` returns only after that rename; the trainer reports a
  checkpoint as saved only after it.
  """

  def __init__(self, workdir: str, keep: int):
    self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                             enable_async_checkpointing=True),
    )

  def latest_step(self) -> int | None:
    """The newest step saved or being saved (`wait()` first for a complete one)."""
    return self.manager.latest_step()

  def save(self, step: int, state: Any, data_state: dict | None = None) -> None:
    """Starts saving `step`: waits for the previous save to finish, copies the arrays off the
    devices (after which the caller may donate or change them), and returns while orbax writes.
    """
    items = {"state": ocp.args.StandardSave(state)}
    if data_state is not None:
      # A copy: the iterator's state must be the one of this step, whatever it does next.
      items["data"] = ocp.args.JsonSave(json.loads(json.dumps(data_state)))
    self.manager.save(step, args=ocp.args.Composite(**items), force=True)

  def wait(self) -> int | None:
    """Waits for the save in progress; returns the newest complete step (None: none yet)."""
    self.manager.wait_until_finished()
    return self.manager.latest_step()

  def reached_preemption(self, step: int) -> bool:
    """Whether every process has agreed to save `step` and stop (jax.distributed's preemption
    sync: a SIGTERM to any one process reaches all of them). Call it at every step, on every
    process. Always False in a single-process run (no jax.distributed)."""
    return self.manager.reached_preemption(step)

  def _existing_step(self, step: int | None) -> int:
    """`step`, or the latest one when None; a clear error when there is no such checkpoint."""
    self.wait()
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {self.directory}; train first (python train.py)")
    if step not in self.manager.all_steps():
      raise FileNotFoundError(
          f"no checkpoint for step {step} in {self.directory}; have {self.manager.all_steps()}")
    return step

  def restore(self, abstract_state: Any, step: int | None = None,
              with_data: bool = True) -> tuple[Any, dict | None]:
    """(state, data_state) of `step` (default: the latest) into the shapes of abstract_state;
    data_state is None where the checkpoint has none or with_data=False."""
    step = self._existing_step(step)
    has_data = with_data and os.path.isdir(os.path.join(self.directory, str(step), "data"))
    return self._restore_step(abstract_state, step, has_data)

  def restore_latest(self, abstract_state: Any) -> tuple[Any, dict, int]:
    """(state, data_state, step) of the newest checkpoint that restores, for resuming training.

    A checkpoint that fails to restore (truncated or missing files, no data iterator state) is
    skipped with a one-line warning on stderr and moved aside to checkpoints/STEP.unreadable, so
    that training can write that step again; where none restores, a one-line RuntimeError names
    them all and nothing is moved.
    """
    self._existing_step(None)
    failed = []
    for candidate in sorted(self.manager.all_steps(), reverse=True):
      try:
        state, data = self._restore_step(abstract_state, candidate, True)
        ok = True
      except Exception as e:  # noqa: BLE001 (orbax and tensorstore raise many kinds)
        ok, reason = False, _one_line(e)
      if not _everywhere(ok):  # every process falls back to the same step
        failed.append((candidate, reason if not ok else "failed on another process"))
        continue
      if failed:
        self._set_aside([s for s, _ in failed])
        if jax.process_index() == 0:
          bad = ", ".join(f"step {s} ({why})" for s, why in failed)
          moved = ", ".join(f"{s}.unreadable" for s, _ in failed)
          print(f"warning: the checkpoint of {bad} in {self.directory} does not restore; moved "
                f"it to {moved} and resumed from step {candidate}", file=sys.stderr, flush=True)
      return state, data, candidate
    raise RuntimeError(
        f"no checkpoint in {self.directory} restores: " + "; ".join(
            f"step {s}: {why}" for s, why in failed) + "; move them away to start afresh")

  def _restore_step(self, abstract_state: Any, step: int, with_data: bool) -> tuple[Any, dict]:
    items = {"state": ocp.args.StandardRestore(abstract_state)}
    if with_data:
      if not os.path.isdir(os.path.join(self.directory, str(step), "data")):
        raise FileNotFoundError(f"no data iterator state ({step}/data is missing)")
      items["data"] = ocp.args.JsonRestore()
    restored = self.manager.restore(step, args=ocp.args.Composite(**items))
    return restored["state"], (restored["data"] if with_data else None)

  def _set_aside(self, steps: list[int]) -> None:
    """Renames checkpoints/STEP to STEP.unreadable (kept for inspection, out of orbax's sight)."""
    if jax.process_index() == 0:
      for step in steps:
        (epath.Path(self.directory) / str(step)).rename(
            epath.Path(self.directory) / f"{step}.unreadable")
    multihost_utils.sync_global_devices("checkpoints set aside")
    self.manager.reload()

  def restore_params(self, abstract_params: Any, step: int | None = None) -> tuple[Any, int]:
    """(params, step): only state["params"] of `step` (default: the latest), into the shapes
    and shardings of abstract_params; the optimizer state is never read (orbax partial restore).

    A checkpoint of a model of another shape raises a ValueError that names the first array
    that differs, before anything is read.
    """
    step = self._existing_step(step)
    path = epath.Path(self.directory) / str(step) / "state"
    stored = ocp.PyTreeCheckpointHandler().metadata(path).tree["params"]
    _check_shapes(stored, abstract_params, f"checkpoint in {self.directory}")
    item = {"params": abstract_params}
    restored = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
        item=item, restore_args=ocp.checkpoint_utils.construct_restore_args(item),
        partial_restore=True)))
    return restored["state"]["params"], step

  def close(self) -> None:
    self.manager.close()


def checkpoints_dir(path: str) -> str:
  """The orbax checkpoints directory `path` names: itself, or WORKDIR/checkpoints of a workdir."""
  if "://" not in path:
    path = os.path.abspath(path)  # orbax takes absolute paths only (gs://... are)
  inner = epath.Path(path) / "checkpoints"
  return os.fspath(inner if inner.is_dir() else epath.Path(path))


def restore_init_params(path: str, fresh_params: Any, memory_params: set[str]) -> tuple[Any, str]:
  """The parameters a fresh run starts from when config.init_from=path (continual pre-training).

  path: the output of `python -m infini_jax.convert`, or another run's WORKDIR/checkpoints (or its
  workdir); its latest step is read, parameters only. fresh_params: the new run's initialised
  parameters (a pure dict of arrays on the mesh); they are the restore targets (shapes, dtypes and
  shardings: the source lands directly where this run keeps it) and they supply the memory's
  parameters that the source lacks: `memory_params`, the names ("stages/0/blocks/attn/memory/
  gate/beta") of the model's `MemoryParam`s (TrainSetup.memory_params). Any other difference in
  names or shapes is a ValueError, before anything is read. Returns (params, a one-line note of what happened, for the log).
  """
  directory = checkpoints_dir(path)
  # Reads only (read_only=True would say so in a warning on every run).
  manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(create=False))
  try:
    step = manager.latest_step()
    if step is None:
      raise FileNotFoundError(
          f"init_from={path}: no checkpoint in {directory}; point it at the --out of "
          "python -m infini_jax.convert or at a training run's WORKDIR/checkpoints")
    stored = ocp.PyTreeCheckpointHandler().metadata(
        epath.Path(directory) / str(step) / "state").tree["params"]
    have, want = _flat(stored), _flat(fresh_params)
    fill = sorted(n for n in set(want) - set(have) if n in memory_params)
    drop = sorted(n for n in set(have) - set(want) if _is_memory_param(n))
    _check_shapes(_without(stored, drop), _without(fresh_params, fill),
                  f"init_from={path} (step {step})")
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                            _without(fresh_params, fill))
    item = {"params": abstract}
    restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
        item=item, restore_args=ocp.checkpoint_utils.construct_restore_args(item),
        partial_restore=True)))["state"]["params"]
  finally:
    manager.close()
  note = f"initialised the parameters from the checkpoint of step {step} in {directory}"
  gates = [n for n in fill if n.endswith("/gate/beta")]
  if gates:
    beta = _first_value(fresh_params, gates[0])
    note += (f"; it has no gates: {sum(want[n][0] for n in gates)} layers start at this run's "
             "model.infini.gate_init "
             f"β={beta:g} (sigmoid {1 / (1 + np.exp(-beta)):.3g})")
  if len(fill) > len(gates):
    note += f"; fresh {', '.join(n for n in fill if n not in gates)}"
  if drop:
    note += f"; unused there: {len(drop)} memory parameters ({drop[0]}, ...)"
  return _merge(fresh_params, restored), note


def _one_line(error: Exception) -> str:
  """The first line of an error, as short as a log line allows."""
  text = (str(error).strip().splitlines() or [""])[0]
  return f"{type(error).__name__}: {text[:200]}{'...' if len(text) > 200 else ''}"


def _everywhere(ok: bool) -> bool:
  """True where `ok` holds on every process (they must agree on the step they resume from)."""
  if jax.process_count() == 1:
    return ok
  return bool(np.all(multihost_utils.process_allgather(np.array(ok))))


def _is_memory_param(name: str) -> bool:
  """Whether a source's parameter belongs to a memory: they all live under attn/memory or in
  the model-level parts (infini_jax/memories)."""
  return "/memory/" in name or name.startswith("parts/")


def _name(path) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def _flat(tree: Any) -> dict[str, tuple[int, ...]]:
  return {_name(path): tuple(x.shape) for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _without(tree: dict, names: list[str]) -> dict:
  """The nested dict `tree` without the leaves named in `names` ("stages/0/blocks/attn/wq")."""
  flat = traverse_util.flatten_dict(tree)
  return traverse_util.unflatten_dict({k: v for k, v in flat.items()
                                       if "/".join(map(str, k)) not in names})


def _merge(base: dict, update: dict) -> dict:
  """`base` with every leaf that `update` has replaced by update's."""
  return traverse_util.unflatten_dict({**traverse_util.flatten_dict(base),
                                       **traverse_util.flatten_dict(update)})


def _first_value(tree: dict, name: str) -> float:
  """One element of the leaf `name`, read from this process's own shard (multi-host safe)."""
  leaf = next(x for p, x in jax.tree_util.tree_flatten_with_path(tree)[0] if _name(p) == name)
  return float(np.asarray(leaf.addressable_shards[0].data).flat[0])


def _check_shapes(stored: Any, wanted: Any, what: str) -> None:
  """Raises if the arrays of `stored` (checkpoint metadata) and `wanted` differ in name or shape."""
  have, want = _flat(stored), _flat(wanted)
  diffs = [f"{name} is {have.get(name, 'missing')} there, {want.get(name, 'missing')} here"
           for name in sorted(set(have) | set(want)) if have.get(name) != want.get(name)]
  if diffs:
    more = f" (and {len(diffs) - 1} more)" if len(diffs) > 1 else ""
    raise ValueError(f"{what} was written by a model with a different shape: params {diffs[0]}"
                     f"{more}; use the config it was trained with")
