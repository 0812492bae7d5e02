"""The train state on a mesh: its shapes and shardings, initialisation, and the jitted step.

The state is a plain pytree {step, params, opt_state}; params are nnx pure dicts, so it jits,
donates and checkpoints with no module objects in the way. Shapes come first (`eval_shape`), then
shardings from the parameters' logical axis names and the rules table, then allocation directly
on the mesh (jit with out_shardings): a model too large for one device is never materialised
whole.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from infini_jax import optim
from infini_jax import sharding as sh
from infini_jax.memories.common import MemoryParam
from infini_jax.model import InfiniTransformer, ModelConfig

BATCH_KEYS = ("inputs", "targets", "mask", "weights")


def make_train_step(graphdef, tx, lr_schedule, grad_accum: int) -> Callable:
  """train_step(state, batch) -> (state, metrics): one optimizer step over grad_accum micro-batches.

  The loss is the mean over target tokens of the whole global batch, each weighed by the batch's
  "weights" (the data pipeline's: 1 on real tokens, 0 on padding, data.answer_weight on a passkey
  answer), whatever the split into micro-batches.
  """

  def micro_loss(params, micro):
    model = nnx.merge(graphdef, params)
    nll, _ = model.nll(micro["inputs"], micro["targets"], mask=micro["mask"])
    weights = jnp.where(micro["mask"], micro["weights"], 0.0)
    return (nll * weights).sum(), weights.sum()

  def train_step(state, batch):
    params = state["params"]
    micro = jax.tree.map(lambda x: x.reshape(grad_accum, -1, *x.shape[1:]), batch)

    def accumulate(carry, micro_batch):
      grads, loss, count = carry
      (l, n), g = jax.value_and_grad(micro_loss, has_aux=True)(params, micro_batch)
      return (jax.tree.map(jnp.add, grads, g), loss + l, count + n), None

    zeros = jax.tree.map(jnp.zeros_like, params)
    (grads, loss, count), _ = jax.lax.scan(accumulate, (zeros, 0.0, 0.0), micro)
    count = jnp.maximum(count, 1e-6)
    grads = jax.tree.map(lambda g: g / count, grads)
    updates, opt_state = tx.update(grads, state["opt_state"], params)
    new_state = dict(step=state["step"] + 1, params=optax.apply_updates(params, updates),
                     opt_state=opt_state)
    return new_state, dict(loss=loss / count, grad_norm=optax.tree.norm(grads),
                           lr=lr_schedule(state["step"]))

  return train_step


@dataclasses.dataclass
class TrainSetup:
  """Everything shape- and sharding-related about one run, computed without allocating."""

  model_cfg: ModelConfig
  mesh: jax.sharding.Mesh
  rules: dict[str, Any]
  graphdef: Any
  tx: optax.GradientTransformation
  lr_schedule: optax.Schedule
  abstract_state: Any  # ShapeDtypeStructs carrying their shardings (restore targets)
  state_shardings: Any
  batch_sharding: jax.sharding.NamedSharding
  memory_params: set[str]  # names of the MemoryParams, which init_from leaves fresh
  init: Callable  # key -> state, allocated on the mesh
  train_step: Callable  # jitted, donates the state

  @property
  def num_params(self) -> int:
    return sum(x.size for x in jax.tree.leaves(self.abstract_state["params"]))

  def model(self, params) -> InfiniTransformer:
    return nnx.merge(self.graphdef, params)

  def global_batch(self, local_batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    """This process's rows -> the global batch, split over the data axes of the mesh."""
    return {k: jax.make_array_from_process_local_data(self.batch_sharding, local_batch[k])
            for k in BATCH_KEYS}


def opt_state_shardings(abstract_opt_state, abstract_params, param_sh, mesh):
  """Optimizer moments follow their parameter's sharding; anything else (step counters,
  Adafactor's factored rows and columns) is replicated.

  An optimizer-state leaf belongs to the parameter whose path ends its own path (optax nests the
  parameter tree under its state's fields: ...inner_state[0].mu['stages'][0]['blocks']['attn']['wq']).
  """
  keys = lambda path: tuple(str(k) for k in path)  # noqa: E731
  params = {keys(p): (leaf.shape, shd) for (p, leaf), shd in zip(
      jax.tree_util.tree_flatten_with_path(abstract_params)[0], jax.tree.leaves(param_sh))}
  depth = max(len(k) for k in params)
  rep = sh.replicated(mesh)

  def one(path, leaf):
    path = keys(path)
    for n in range(min(depth, len(path)), 0, -1):
      shape, shd = params.get(path[-n:], (None, None))
      if shd is not None:
        return shd if shape == leaf.shape else rep
    return rep

  return jax.tree_util.tree_map_with_path(one, abstract_opt_state)


def build(config, model_cfg: ModelConfig, mesh: jax.sharding.Mesh) -> TrainSetup:
  rules = sh.check_rules(config.sharding_rules)
  abstract_model = nnx.eval_shape(lambda: InfiniTransformer(model_cfg, rngs=nnx.Rngs(0)))
  tx, lr_schedule = optim.make(config.optimizer, config.train.steps,
                               optim.param_labels(abstract_model))
  graphdef, abstract_vars = nnx.split(abstract_model)
  param_sh = sh.param_shardings(abstract_vars, mesh, rules)

  def init(key):
    model = InfiniTransformer(model_cfg, rngs=nnx.Rngs(params=key))
    params = nnx.to_pure_dict(nnx.state(model))
    return dict(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))

  abstract = jax.eval_shape(init, jax.random.key(0))
  state_sh = dict(
      step=sh.replicated(mesh), params=param_sh,
      opt_state=opt_state_shardings(abstract["opt_state"], abstract["params"], param_sh, mesh))
  abstract = jax.tree.map(lambda s, d: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=d),
                          abstract, state_sh)
  batch_sh = sh.batch_sharding(mesh, rules, config.batch_size)
  memory_params = {"/".join(map(str, path)) for path, _ in nnx.to_flat_state(
      nnx.state(abstract_model, MemoryParam))}
  step = make_train_step(graphdef, tx, lr_schedule, config.optimizer.grad_accum)
  return TrainSetup(
      model_cfg=model_cfg, mesh=mesh, rules=rules, graphdef=graphdef, tx=tx,
      lr_schedule=lr_schedule, abstract_state=abstract, state_shardings=state_sh,
      batch_sharding=batch_sh, memory_params=memory_params,
      init=jax.jit(init, out_shardings=state_sh),
      train_step=jax.jit(step, in_shardings=(state_sh, {k: batch_sh for k in BATCH_KEYS}),
                         out_shardings=(state_sh, sh.replicated(mesh)), donate_argnums=0))
