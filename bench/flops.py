"""Matmul FLOPs counted in a function's jaxpr: what the code runs, to check the written formulas.

MFU's numerator is a formula (ModelConfig.flops_per_token, bench/layer.flops_per_token). A formula
can drift from the code it describes: a projection added, an attention that skips its masked
triangle. `matmul_flops(fn, *args)` traces fn and adds 2·(product of the output's dims)·(product
of the contracted dims) for every dot_general, descending into every sub-jaxpr (jit, remat,
custom_vjp, cond) and multiplying a scan's body by its length, so the tests can hold the formulas
to the code. Elementwise ops are not counted: MFU counts matmuls only.

    matmul_flops(lambda x: x @ w, x)   # 2·M·K·N
"""

from __future__ import annotations

import math
from typing import Callable

import jax
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
