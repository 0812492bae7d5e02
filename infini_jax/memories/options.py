"""Options beyond the paper for the Infini memory, each in one place (docs/RESULTS.md measures
them). Each is a part of `memories.infini.Infini`: a rule, a gate, or an `Option` whose hooks see
the memory's q and k before the features, each token's write weight, and the memory before the
write. Their parameters are `GateParam`s: float32, the gates' learning rate, no weight decay.

Axis legend as in infini.py: B batch, T segment tokens, N query heads, K key/value heads,
G = N / K, H key dim, V value dim.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from infini_jax import sharding as sh
from infini_jax.memories.common import Gate, gate_param
from infini_jax.memories.infini import CompressiveMemory


class Option(nnx.Module):
  """The hooks, each the paper's identity here."""

  def flops(self, N: int, K: int, H: int) -> float:
    del N, K, H
    return 0.0

  def query(self, q: jax.Array) -> jax.Array:
    """q [B, T, N, H] as the memory reads with it."""
    return q

  def key(self, k: jax.Array) -> jax.Array:
    """k [B, T, K, H] as the memory writes with it."""
    return k

  def weigh(self, k: jax.Array, w: jax.Array) -> jax.Array:
    """Each token's write weight w [B, T, K] (0 on padding), given its key k [B, T, K, H]."""
    del k
    return w

  def fade(self, memory: CompressiveMemory, mask: jax.Array | None) -> CompressiveMemory:
    """The memory before this segment's write."""
    del mask
    return memory


class MemoryScale(Option):
  """model.infini.memory_scale: q and k times exp(s) before σ, s learned per key/value head (0 at
  init).

  σ = ELU + 1 is positive, so every stored key overlaps every query: a growing scale drives the
  features of opposite signs towards 0, so a retrieval can stay sharp while unrelated tokens pile
  up in M and z over a long stream.
  """

  def __init__(self, num_heads: int, num_kv_heads: int):
    self.G = num_heads // num_kv_heads
    self.log_scale = gate_param(jnp.zeros((num_kv_heads,)), (sh.KV_HEADS,))

  def query(self, q):
    s = jnp.repeat(jnp.exp(self.log_scale[...]), self.G)  # [N]: head n reads kv head n // G
    return q.astype(jnp.float32) * s[:, None]

  def key(self, k):
    return k.astype(jnp.float32) * jnp.exp(self.log_scale[...])[:, None]


class WriteGate(Option):
  """model.infini.write_gate: each token writes with strength sigmoid(k·w + b) per key/value
  head, so that tokens worth nothing later (filler) need not pile up in M and z. From k, not x, so
  that decoding's cache holds all a write needs. Zero at init: every token writes with 1/2, which
  for linear and delta scales M and z alike and so reads exactly as the paper's memory."""

  def __init__(self, num_kv_heads: int, head_dim: int):
    self.w = gate_param(jnp.zeros((num_kv_heads, head_dim)), (sh.KV_HEADS, sh.HEAD_DIM))
    self.b = gate_param(jnp.zeros((num_kv_heads,)), (sh.KV_HEADS,))

  def flops(self, N, K, H):
    return 2 * K * H

  def weigh(self, k, w):
    logit = jnp.einsum("BTKH,KH->BTK", k.astype(jnp.float32), self.w[...])
    return w * jax.nn.sigmoid(logit + self.b[...])


class Decay(Option):
  """model.infini.decay: M and z fade by γ = sigmoid(a) per key/value head before each segment's
  write, so that with the linear rule the read weighs segment s-j by γ^j: a recency-weighted
  summary whose sharpness does not wash out as the stream grows. The heads start at half-lives
  spread from 1 to about 20 segments (γ from 0.5 to 0.97); a segment of padding fades nothing."""

  def __init__(self, num_kv_heads: int):
    self.logit = gate_param(jnp.linspace(0.0, jnp.log(31.0), num_kv_heads), (sh.KV_HEADS,))

  def value(self) -> jax.Array:
    return jax.nn.sigmoid(self.logit[...])  # [K]

  def fade(self, memory, mask):
    B = memory.M.shape[0]
    real = jnp.ones((B, 1), bool) if mask is None else jnp.any(mask, axis=1)[:, None]  # [B, 1]
    gamma = jnp.where(real, self.value()[None, :], 1.0)  # [B, K]
    return CompressiveMemory(memory.M * gamma[:, :, None, None], memory.z * gamma[:, :, None])


class QueryGate(Gate):
  """model.infini.query_gate: the gate is sigmoid(β + q·w) per token and head, q before RoPE, so
  that a head can read the memory for some tokens and its local context for others. w is 0 at init:
  the gate starts as the paper's."""

  def __init__(self, num_heads: int, head_dim: int, init: float, additive: bool = False):
    super().__init__(num_heads, init, additive)
    self.w = gate_param(jnp.zeros((num_heads, head_dim)), (sh.HEADS, sh.HEAD_DIM))

  def flops(self, N, K, H):
    return 2 * N * H

  def logit(self, q):
    return super().logit(q) + jnp.einsum("BTNH,NH->BTN", q.astype(jnp.float32), self.w[...])


def unit(x: jax.Array) -> jax.Array:
  """φ(x) = x / |x| over the last axis, in float32."""
  x = x.astype(jnp.float32)
  return x * jax.lax.rsqrt(jnp.sum(x * x, axis=-1, keepdims=True) + 1e-12)


class DeltaNet:
  """rule=deltanet: the delta rule of Schlag et al. (2021), as in DeltaNet, with unit-length
  features φ and no normaliser (z stays 0):
    read   A_mem = φ(q) M
    write  M_t = M_{t-1} + w_t φ(k_t)ᵀ (v_t - φ(k_t) M_{t-1}),   token by token
  Each write replaces what M returned for the key with v_t, so M stays bounded and the read of a
  key that later writes do not overlap stays exact however long the stream. The paper's delta
  rule writes a segment at once, which for unit keys overshoots wherever a key repeats inside it;
  here the T sequential writes are solved at once. With U_t = w_t (v_t - φ_t M_{t-1}):
    U_t + w_t Σ_{s<t} (φ_t·φ_s) U_s = w_t (v_t - φ_t M_0),   then M_T = M_0 + Φᵀ U,
  a unit lower-triangular system per batch row and head.
  """

  features = staticmethod(unit)

  def flops(self, N: int, K: int, H: int, T: int) -> float:
    # read φ(q) M; write: the T x T key Gram, φ(k) M_0, φᵀ U
    return 2 * N * H * H + 2 * T * K * H + 2 * K * H * H + 2 * K * H * H

  def read(self, memory, fq):
    return jnp.einsum("BTKGH,BKHV->BTKGV", fq, memory.M)

  def write(self, memory, fk, v, w):
    T = fk.shape[1]
    w = jnp.einsum("BTK->BKT", w)[..., None]  # [B, K, T, 1]
    gram = jnp.einsum("BTKH,BSKH->BKTS", fk, fk)  # [B, K, T, T]
    lower = jnp.tril(gram, -1) * w
    rhs = w * (jnp.einsum("BTKV->BKTV", v) - jnp.einsum("BTKH,BKHV->BKTV", fk, memory.M))
    U = jax.scipy.linalg.solve_triangular(lower + jnp.eye(T, dtype=lower.dtype), rhs,
                                          lower=True, unit_diagonal=True)  # [B, K, T, V]
    return CompressiveMemory(memory.M + jnp.einsum("BTKH,BKTV->BKHV", fk, U), memory.z)
