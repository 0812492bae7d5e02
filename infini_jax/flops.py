"""Matmul FLOPs counted in a function's jaxpr: what the code runs, to check the written formulas.

MFU's numerator is a formula (ModelConfig.flops_per_token). A formula can drift from the code it
describes: a projection added, an attention that skips its masked triangle. `matmul_flops(fn,
*args)` traces fn and adds 2·(product of the output's dims)·(product of the contracted dims) for
every dot_general, descending into every sub-jaxpr (jit, remat, custom_vjp, cond) and multiplying
a scan's body by its length, so the tests can hold the formulas to the code. Elementwise ops are
not counted: MFU counts matmuls only.

    matmul_flops(lambda x: x @ w, x)   # 2·M·K·N
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx
from jax.extend import core


def matmul_flops(fn: Callable, *args) -> int:
  """Matmul FLOPs (2 per multiply-add) of one call fn(*args); args may be ShapeDtypeStructs."""
  return _count(jax.make_jaxpr(fn)(*args).jaxpr)


def _count(jaxpr) -> int:
  total = 0
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "dot_general":
      (contract, _), _ = eqn.params["dimension_numbers"]
      lhs = eqn.invars[0].aval.shape
      total += 2 * math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[d] for d in contract)
    times = eqn.params["length"] if eqn.primitive.name == "scan" else 1
    for sub in _subjaxprs(eqn):
      total += times * _count(sub)
  return total


def _subjaxprs(eqn):
  """The jaxprs an equation runs: its params that are (closed) jaxprs, or lists of them (cond's
  branches count once each: they are alternatives, and the model has none)."""
  for value in eqn.params.values():
    for v in value if isinstance(value, (list, tuple)) else (value,):
      if isinstance(v, core.ClosedJaxpr):
        yield v.jaxpr
      elif isinstance(v, core.Jaxpr):
        yield v


def step_flops(cfg, batch: int, seq_len: int) -> dict:
  """A model's counted matmul FLOPs for tokens [batch, seq_len]: `forward` (the loss), `train`
  (the loss and its gradient, with the configured remat's recomputation) and `formula`
  (ModelConfig.flops_per_token for as many tokens)."""
  from infini_jax.model import InfiniTransformer  # noqa: PLC0415 (model imports this file's users)

  def loss(params, graphdef, t):
    return nnx.merge(graphdef, params).nll(t, t)[0].mean()

  def counted(fn):  # the model is built inside the trace: no parameter is ever allocated
    def traced(t):
      graphdef, params = nnx.split(InfiniTransformer(cfg, rngs=nnx.Rngs(0)))
      return fn(params, graphdef, t)
    return matmul_flops(traced, jax.ShapeDtypeStruct((batch, seq_len), jnp.int32))

  return dict(forward=counted(loss), train=counted(jax.grad(loss)),
              formula=cfg.flops_per_token() * batch * seq_len)


def layer_flops_per_token(d_model: int, num_heads: int, head_dim: int, segment: int,
                          memory: bool) -> float:
  """One attention layer's forward matmul FLOPs per token (bench/layer.py's shape), with D model
  dim, N heads (as many key/value heads), H head dim, T segment:
    projections  2·D·3·N·H + 2·N·H·D   q, k, v and o
    attention    2·T·N·H + 2·T·N·H     q kᵀ and p v over the full T x T square, as peers count it
                                       (the blocked path skips the masked half)
    memory       2·N·H·H + 2·N·H + 2·N·H·H   the paper's read (numerator, denominator) and write
                                       of M (z's update is a sum, not a matmul)
  """
  D, N, H = d_model, num_heads, head_dim
  proj = 2 * D * 3 * N * H + 2 * N * H * D
  attn = 4 * segment * N * H
  mem = (4 * N * H * H + 2 * N * H) if memory else 0
  return proj + attn + mem
