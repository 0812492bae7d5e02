"""`train.py --dry_run`: what a run needs per device, from shapes alone (nothing is allocated).

Sizes a pod slice before paying for it: parameter count, FLOPs per token, and per-device bytes of
parameters, optimizer state, memory states and activations under the configured mesh and rules.
Parameters and optimizer state are exact (their shard shapes on an abstract mesh of the configured
size). Activations are an estimate of the peak working set of back-propagation through one
segment with `remat=full` (every layer's forward activations for that segment are recomputed and
held while it is differentiated), plus the per-segment carries the scan keeps:

  per layer, per sequence:  T·(6·D + 3·F/t + 4·N·H/t)·c  +  (N/t)·T²·4   (c compute-dtype bytes,
                                                                        t tensor-axis size)
  scan carries:             S · (memory-state bytes per device)
  loss readout:             T·(W/t)·4·2                                  (logits, log-softmax)
"""

from __future__ import annotations

import jax
import numpy as np
from flax import nnx
from jax.sharding import AbstractMesh, AxisType, NamedSharding

from infini_jax import sharding as sh
from infini_jax.model import DTYPES, InfiniTransformer, ModelConfig
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

  c = np.dtype(DTYPES[model_cfg.dtype]).itemsize
  B = config.batch_size // (data * fsdp * config.optimizer.grad_accum)  # sequences per device
  D, F, N, K, H = (model_cfg.d_model, model_cfg.mlp_dim, model_cfg.num_heads,
                   model_cfg.num_kv_heads, model_cfg.head_dim)
  T, W, Lyr = model_cfg.segment_len, model_cfg.vocab_size, model_cfg.num_layers
  S = config.seq_len // T
  kv_local = K // tensor if K % tensor == 0 else K
  state = Lyr * B * kv_local * (H * H + H) * 4 if model_cfg.memory == "infini" else 0
  per_layer = T * (6 * D + 3 * F / tensor + 4 * N * H / tensor) * c + (N / tensor) * T * T * 4
  activations = B * (Lyr * per_layer + T * (W / tensor) * 8) + S * state
  return dict(
      devices=device_count, mesh=f"data={data} fsdp={fsdp} tensor={tensor}",
      parameters=sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params)),
      flops_per_token=3 * model_cfg.flops_per_token(),
      param_bytes=_bytes(params, param_sh), optimizer_bytes=_bytes(opt, opt_sh),
      memory_state_bytes=state, activation_bytes=activations)


def report(config, model_cfg: ModelConfig, device_count: int) -> dict[str, float]:
  r = estimate(config, model_cfg, device_count)
  gib = lambda b: f"{b / 2**30:8.3f} GiB"  # noqa: E731
  total = r["param_bytes"] + r["optimizer_bytes"] + r["activation_bytes"]
  print(f"dry run: {config.model_name} on {r['devices']} devices ({r['mesh']}), "
        f"batch {config.batch_size} x {config.seq_len} tokens, segment {model_cfg.segment_len}\n"
        f"  parameters          {r['parameters'] / 1e9:.3f}e9\n"
        f"  train FLOPs/token   {r['flops_per_token'] / 1e9:.3f}e9\n"
        f"  per device:\n"
        f"    parameters        {gib(r['param_bytes'])}\n"
        f"    optimizer state   {gib(r['optimizer_bytes'])}\n"
        f"    memory states     {gib(r['memory_state_bytes'])}  (per segment carry)\n"
        f"    activations (est) {gib(r['activation_bytes'])}\n"
        f"    total (est)       {gib(total)}")
  return r
