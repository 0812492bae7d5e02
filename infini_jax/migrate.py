"""Parameters of the per-layer layout into the scanned one, for checkpoints written before the
layers became a scan.

Before: blocks/<i>/attn/{wq, ..., gate, gate_w, memory_scale, write_gate_w, write_gate_b,
memory_decay}, shift_mix and memory_init at the top. Now: stages/<s>/blocks/... stacked on a
leading layer axis, each memory's parameters under attn/memory (infini_jax/memories), the
model-level parts under parts/<j>. `stack(old, cfg)` maps one to the other; the command line
rewrites a checkpoint's parameters as a new checkpoint (for eval.py, or init_from):

  python -m infini_jax.migrate --config=configs/python_lm.py:... --old=runs/x --out=runs/x_scanned
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import jax
import numpy as np
from absl import app, flags, logging
from flax import nnx
from ml_collections import config_flags

from infini_jax.model import InfiniTransformer, ModelConfig, stages

# The memory's parameters: their path under a block now -> their name under blocks/<i>/attn.
_MEMORY = {("gate", "beta"): "gate", ("gate", "w"): "gate_w", ("log_scale",): "memory_scale",
           ("w",): "write_gate_w", ("b",): "write_gate_b", ("logit",): "memory_decay"}
_PARTS = {"mix": "shift_mix", "init": "memory_init"}


def _key(k) -> Any:
  k = getattr(k, "key", getattr(k, "idx", k))
  return int(k) if isinstance(k, str) and k.isdigit() else k


def flatten(tree) -> dict[tuple, Any]:
  return {tuple(_key(k) for k in path): leaf
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def old_name(path: tuple, cfg: ModelConfig) -> list[tuple]:
  """The per-layer paths whose arrays, stacked, make the new parameter at `path`."""
  if path[0] == "parts":
    return [(_PARTS[path[-1]],)]
  if path[0] != "stages":
    return [path]
  first, count = stages(cfg)[path[1]]
  rest = path[3:]
  if rest[:2] == ("attn", "memory"):
    tail = rest[2:]
    tail = tail[2:] if tail[0] == "options" else tail  # options/<option>/<name>
    rest = ("attn", _MEMORY[tuple(tail)])
  return [("blocks", i) + rest for i in range(first, first + count)]


def stack(old: dict, cfg: ModelConfig) -> dict:
  """A per-layer parameter tree (nested dict) -> the scanned model's, as a nested dict."""
  have = flatten(old)
  abstract = nnx.to_pure_dict(nnx.state(nnx.eval_shape(
      lambda: InfiniTransformer(cfg, rngs=nnx.Rngs(0))), nnx.Param))
  out: dict = {}
  for path, leaf in flatten(abstract).items():
    sources = old_name(path, cfg)
    missing = [s for s in sources if s not in have]
    if missing:
      raise ValueError(f"the old parameters lack {'/'.join(map(str, missing[0]))} for "
                       f"{'/'.join(map(str, path))}: was this checkpoint written with this config?")
    arrays = [np.asarray(have[s]) for s in sources]
    value = np.stack(arrays) if path[0] == "stages" else arrays[0]
    if value.shape != leaf.shape:
      raise ValueError(f"{'/'.join(map(str, path))}: the old parameters make {value.shape}, the "
                       f"model needs {leaf.shape}: use the config the checkpoint was written with")
    node = out
    for k in path[:-1]:
      node = node.setdefault(k, {})
    node[path[-1]] = value.astype(leaf.dtype)
  return out


def main(argv):
  """The command line (its flags are defined below, only when run as a program: the library
  imports this module)."""
  del argv
  logging.set_verbosity(logging.WARNING)
  import orbax.checkpoint as ocp  # noqa: PLC0415 (the command line only)
  from infini_jax import config as configlib  # noqa: PLC0415
  from infini_jax.checkpoint import Checkpointer, checkpoints_dir  # noqa: PLC0415
  try:
    cfg = configlib.model_config(FLAGS.config)
    directory = checkpoints_dir(FLAGS.old)
    manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(create=False))
    step = manager.latest_step()
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {directory}")
    path = os.path.join(directory, str(step), "state")
    old = ocp.PyTreeCheckpointer().restore(path)["params"]
    manager.close()
    params = stack(old, cfg)
    ckpt = Checkpointer(FLAGS.out, keep=1)
    ckpt.save(step, {"params": params})
    ckpt.close()
  except (ValueError, FileNotFoundError) as e:
    sys.exit(f"migrate: error: {e}")
  with open(os.path.join(FLAGS.out, "config.json"), "w") as f:
    json.dump(dict(migrated_from=os.path.abspath(FLAGS.old), step=step), f, indent=2)
  print(f"wrote the parameters of step {step} of {directory} in the scanned layout to "
        f"{FLAGS.out}; evaluate with eval.py --workdir={FLAGS.out} or train from them with "
        f"--config.init_from={FLAGS.out}")


FLAGS = flags.FLAGS

if __name__ == "__main__":
  config_flags.DEFINE_config_file("config", None, "The config the old run was trained with "
                                  "(file[:args]).", lock_config=True)
  flags.DEFINE_string("old", None, "The old run's workdir (or its checkpoints folder).")
  flags.DEFINE_string("out", None, "Where to write the migrated checkpoint (a new folder).")
  flags.mark_flags_as_required(["config", "old", "out"])
  app.run(main)
