"""Orbax checkpoints of the whole training state: parameters, optimizer, step and data iterator.

Layout: WORKDIR/checkpoints/STEP/{state, data}. `state` is a pytree of arrays (restored into an
abstract target, so it lands with the shapes, dtypes and shardings the caller asks for); `data`
is the grain iterator's JSON state, so a resumed run reads exactly the batches it would have read.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath


class Checkpointer:

  def __init__(self, workdir: str, keep: int):
    self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
    )

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state: Any, data_state: dict | None = None) -> None:
    """Saves and waits: a checkpoint that is reported saved survives a SIGKILL right after."""
    items = {"state": ocp.args.StandardSave(state)}
    if data_state is not None:
      items["data"] = ocp.args.JsonSave(data_state)
    self.manager.save(step, args=ocp.args.Composite(**items), force=True)
    self.manager.wait_until_finished()

  def restore(self, abstract_state: Any, step: int | None = None,
              with_data: bool = True) -> tuple[Any, dict | None]:
    """(state, data_state) of `step` (default: the latest) into the shapes of abstract_state."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {self.directory}; train first (python train.py)")
    if step not in self.manager.all_steps():
      raise FileNotFoundError(
          f"no checkpoint for step {step} in {self.directory}; have {self.manager.all_steps()}")
    items = {"state": ocp.args.StandardRestore(abstract_state)}
    has_data = with_data and os.path.isdir(os.path.join(self.directory, str(step), "data"))
    if has_data:
      items["data"] = ocp.args.JsonRestore()
    restored = self.manager.restore(step, args=ocp.args.Composite(**items))
    return restored["state"], (restored["data"] if has_data else None)

  def restore_params(self, abstract_params: Any, step: int | None = None) -> tuple[Any, int]:
    """(params, step): only state["params"] of `step` (default: the latest), into the shapes
    and shardings of abstract_params; the optimizer state is never read (orbax partial restore).

    A checkpoint of a model of another shape raises a ValueError that names the first array
    that differs, before anything is read.
    """
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {self.directory}; train first (python train.py)")
    if step not in self.manager.all_steps():
      raise FileNotFoundError(
          f"no checkpoint for step {step} in {self.directory}; have {self.manager.all_steps()}")
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


def _check_shapes(stored: Any, wanted: Any, what: str) -> None:
  """Raises if the arrays of `stored` (checkpoint metadata) and `wanted` differ in name or shape."""
  def flat(tree):
    return {"/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path): tuple(x.shape)
            for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]}

  have, want = flat(stored), flat(wanted)
  diffs = [f"{name} is {have.get(name, 'missing')} there, {want.get(name, 'missing')} here"
           for name in sorted(set(have) | set(want)) if have.get(name) != want.get(name)]
  if diffs:
    more = f" (and {len(diffs) - 1} more)" if len(diffs) > 1 else ""
    raise ValueError(f"{what} was written by a model with a different shape: params {diffs[0]}"
                     f"{more}; use the config it was trained with")
