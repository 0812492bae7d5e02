"""Per-token projections: an einsum over [B, T, ...] activations and a weight, on one token axis.

`token_einsum("BTD,DNH->BTNH", x, w)` equals `jnp.einsum` of the same spec, but merges B and T into
one axis first. Why: the weight's gradient contracts the activations with the output gradient over
every token. With two token axes (B and T) XLA:CPU lowers that contraction through a transposed
copy of the activations. With one token axis it is a plain matrix product. The demo model's
SwiGLU, forward and backward, ran 1.25-1.6x faster on one core of a 2-core CPU, and the whole demo
training step 1.16-1.22x faster on both (bench/mfu.py). On GPU and TPU the reshape costs nothing.
The merge keeps B the major axis, so a batch split across devices stays split.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from infini_jax import sharding as sh


def token_einsum(spec: str, x: jax.Array, w: jax.Array) -> jax.Array:
  """einsum(spec, x, w) for a spec "BT…,…->BT…": x and the output lead with B, T; w has neither."""
  ins, out = spec.split("->")
  lhs, rhs = ins.split(",")
  if not (lhs.startswith("BT") and out.startswith("BT")) or "B" in rhs or "T" in rhs:
    raise ValueError(f"token_einsum spec {spec!r}: x and the output must lead with BT, w must not "
                     "hold B or T; use jnp.einsum for other contractions")
  B, T = x.shape[:2]
  y = jnp.einsum(f"B{lhs[2:]},{rhs}->B{out[2:]}", x.reshape((B * T,) + x.shape[2:]), w)
  return y.reshape((B, T) + y.shape[1:])


def weight(param, dtype) -> jax.Array:
  """A weight in the compute dtype, pinned to its parameter's sharding (its logical names, the
  leading `layers` axis dropped inside the layer scan). Why: the pin also holds the weight's
  gradient to that sharding, so XLA reduce-scatters it over fsdp; left free, it all-reduced the
  attention projections' gradients whole inside the segment loop (tests/test_aot.py)."""
  names = param.get_metadata().get("out_sharding") or ()
  names = tuple(names)[len(names) - param[...].ndim:]
  # After the cast: the gradient is pinned in the compute dtype, where XLA reduces it.
  return sh.constrain(param[...].astype(dtype), names)
