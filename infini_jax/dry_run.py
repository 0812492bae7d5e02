"""`train.py --dry_run`: what a run needs per device, from shapes alone (nothing is allocated).

Without a slice: the parameter count, training FLOPs per token, and the bytes of parameters and
optimizer state each device holds under the configured mesh and rules. These are exact: the shard
shapes of each array on an abstract mesh of the configured size, which tests/test_aot.py holds to
the argument shapes of the compiled TPU program. Activations and temporaries depend on XLA's plan:
give `--topology=v5e:4x4` (or any slice) to compile the step for it and read XLA's own figures
(infini_jax/aot.py).
"""

from __future__ import annotations

import jax
import numpy as np
from flax import nnx
from jax.sharding import AbstractMesh, AxisType

from infini_jax import sharding as sh
from infini_jax.model import InfiniTransformer, ModelConfig
from infini_jax.optim import make as make_optimizer


def _bytes(shapes, shardings) -> int:
  total = 0
  for s, d in zip(jax.tree.leaves(shapes), jax.tree.leaves(shardings)):
    total += int(np.prod(d.shard_shape(s.shape), dtype=np.int64)) * np.dtype(s.dtype).itemsize
  return total


def estimate(config, model_cfg: ModelConfig, device_count: int) -> dict[str, float]:
  data, fsdp, tensor = sh.mesh_shape(config.mesh, device_count)
  mesh = AbstractMesh((data, fsdp, tensor), sh.MESH_AXES, axis_types=(AxisType.Auto,) * 3)
  rules = sh.check_rules(config.sharding_rules)
  abstract = nnx.eval_shape(lambda: InfiniTransformer(model_cfg, rngs=nnx.Rngs(0)))
  _, variables = nnx.split(abstract)
  param_sh = sh.param_shardings(variables, mesh, rules)
  params = nnx.to_pure_dict(variables)
  from infini_jax.optim import param_labels  # noqa: PLC0415
  tx, _ = make_optimizer(config.optimizer, config.train.steps, param_labels(abstract))
  opt = jax.eval_shape(tx.init, params)
  from infini_jax.state import opt_state_shardings  # noqa: PLC0415 (avoids an import cycle)
  opt_sh = opt_state_shardings(opt, params, param_sh, mesh)
  return dict(
      devices=device_count, mesh=f"data={data} fsdp={fsdp} tensor={tensor}",
      parameters=sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params)),
      flops_per_token=3 * model_cfg.flops_per_token(),
      param_bytes=_bytes(params, param_sh), optimizer_bytes=_bytes(opt, opt_sh))


def report(config, model_cfg: ModelConfig, device_count: int) -> dict[str, float]:
  r = estimate(config, model_cfg, device_count)
  gib = lambda b: f"{b / 2**30:8.3f} GiB"  # noqa: E731
  print(f"dry run: {config.model_name} on {r['devices']} devices ({r['mesh']}), "
        f"batch {config.batch_size} x {config.seq_len} tokens, segment "
        f"{model_cfg.shape.segment_len}\n"
        f"  parameters          {r['parameters'] / 1e9:.3f}e9\n"
        f"  train FLOPs/token   {r['flops_per_token'] / 1e9:.3f}e9\n"
        f"  per device:\n"
        f"    parameters        {gib(r['param_bytes'])}\n"
        f"    optimizer state   {gib(r['optimizer_bytes'])}\n"
        f"  activations and temporaries: XLA plans them; compile the step for a slice to see "
        f"them (--topology=v5e:4x4)")
  return r
