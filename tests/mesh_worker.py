"""Runs in a subprocess with 8 fake CPU devices (XLA_FLAGS must be set before jax is imported).

  XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m tests.mesh_worker OUT.json CKPT_DIR

Trains the tiny model for a few steps on fixed batches under several meshes and writes, for
each, the losses, the largest parameter difference from the one-device run and the partition
specs of a few parameters; then saves on (8,1,1) and restores on (2,4,1).
"""

import json
import sys

import jax
import numpy as np

from infini_jax import config as configlib
from infini_jax import sharding as sh
from infini_jax import state as statelib
from infini_jax.checkpoint import Checkpointer

MESHES = [(8, 1, 1), (2, 4, 1), (1, 2, 4), (2, 2, 2)]
STEPS = 3


def tiny_config(mesh):
  c = configlib.defaults("tiny", shape=dict(num_layers=1, num_kv_heads=4, segment_len=16))
  c.seq_len, c.batch_size = 32, 8
  c.mesh.update(data=mesh[0], fsdp=mesh[1], tensor=mesh[2])
  c.optimizer.update(lr=1e-2, warmup_steps=1)
  c.train.steps = 10
  return c


def batches():
  rng = np.random.default_rng(0)
  for _ in range(STEPS):
    tokens = rng.integers(0, 259, (8, 33)).astype(np.int32)
    mask = np.ones((8, 32), bool)
    mask[3, 20:] = False
    yield {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "mask": mask,
           "weights": mask.astype(np.float32)}


def run(mesh_shape, devices, steps=STEPS, state=None, setup=None):
  config = tiny_config(mesh_shape)
  mesh = sh.make_mesh(config.mesh, devices)
  setup = setup or statelib.build(config, configlib.validate(config, len(devices)), mesh)
  losses = []
  with jax.set_mesh(mesh), sh.use_rules(setup.rules):
    state = setup.init(jax.random.key(0)) if state is None else state
    for i, batch in enumerate(batches()):
      if i >= steps:
        break
      state, m = setup.train_step(state, setup.global_batch(batch))
      losses.append(float(m["loss"]))
  return setup, state, losses


def main(out_path, ckpt_dir):
  devices = jax.devices()
  assert len(devices) == 8, devices
  _, ref_state, ref_losses = run((1, 1, 1), devices[:1])
  ref_params = [np.asarray(x) for x in jax.tree.leaves(ref_state["params"])]
  result = {"reference": ref_losses, "meshes": {}}
  setups = {}  # compiled once per mesh: the checkpoint runs below reuse them
  for shape in MESHES:
    setups[shape], state, losses = run(shape, devices)
    params = jax.tree.leaves(state["params"])
    attn = state["params"]["stages"][0]["blocks"]["attn"]  # stacked [layers, ...]
    mlp = state["params"]["stages"][0]["blocks"]["mlp"]
    result["meshes"][str(shape)] = dict(
        losses=losses,
        max_param_diff=max(float(np.abs(np.asarray(p) - r).max()) for p, r in zip(params, ref_params)),
        specs={name: str(x.sharding.spec) for name, x in [
            ("wq", attn["wq"]), ("wo", attn["wo"]), ("w_up", mlp["w_up"]),
            ("embed", state["params"]["embed"])]},
        wq_shard_shape=list(attn["wq"].addressable_shards[0].data.shape),
        mu_wq_spec=next(str(x.sharding.spec) for path, x in
                        jax.tree_util.tree_flatten_with_path(state["opt_state"])[0]
                        if jax.tree_util.keystr(path).endswith("['attn']['wq']")))

  # Save after 2 steps on (8,1,1); restore on (2,4,1) and take the third step there.
  _, state, _ = run((8, 1, 1), devices, steps=2, setup=setups[(8, 1, 1)])
  ckpt = Checkpointer(ckpt_dir, keep=1)
  ckpt.save(2, state)
  target = setups[(2, 4, 1)]
  restored, _ = ckpt.restore(target.abstract_state)
  ckpt.close()
  with jax.set_mesh(target.mesh), sh.use_rules(target.rules):
    third = list(batches())[2]
    _, m = target.train_step(restored, target.global_batch(third))
  result["resharded"] = dict(
      loss=float(m["loss"]), wq_spec=str(restored["params"]["stages"][0]["blocks"]["attn"]["wq"].sharding.spec))
  with open(out_path, "w") as f:
    json.dump(result, f, indent=2)


if __name__ == "__main__":
  main(*sys.argv[1:])
