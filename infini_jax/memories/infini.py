"""Infini-attention (Munkhdalai et al. 2024, section 2.1): a compressive memory per layer.

Axis legend: B batch, T segment tokens, N query heads, K key/value heads, G = N / K query heads
per key/value head, H key dim, V value dim.

Each key/value head keeps an associative matrix M [H, V] and a normaliser z [H]. Per segment s,
with the segment's own q, k, v (no extra projections) and σ(x) = ELU(x) + 1:
  A_dot = softmax(RoPE(q) RoPE(k)ᵀ / √H) v, causal, the segment only   `context`
  A_mem = σ(q) M_{s-1} / (σ(q) z_{s-1}),   no position encoding         eq. 3, `Linear.read`
  linear: M_s = M_{s-1} + σ(k)ᵀ v                                       eq. 4, `Linear.write`
  delta:  M_s = M_{s-1} + σ(k)ᵀ (v - σ(k) M_{s-1} / (σ(k) z_{s-1}))     eq. 5, `Delta.write`
          z_s = z_{s-1} + Σ_t σ(k_t)
  A     = sigmoid(β) A_mem + (1 - sigmoid(β)) A_dot, one β per head     eq. 6, `common.Gate`
M_0 = 0 and z_0 = 0 read as exactly 0. The memory math runs in float32 whatever the compute dtype:
M and z grow with the stream, and 16-bit accumulators overflow on long inputs.

Options beyond the paper (infini_jax/memories/options.py) plug into the parts: `context`
(xl_cache), `rule` (deltanet), `gate` (query_gate, memory_add) and `options`, whose hooks see
q and k before σ, each token's write weight, and the memory before the write.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from infini_jax.memories.common import Gate, KVCache
from infini_jax.sections import is_finite, need

RULE_NAMES = ("linear", "delta", "deltanet")  # Linear, Delta, options.DeltaNet
# The options beyond the paper (infini_jax/memories/options.py), each off by default.
OPTIONS = ("memory_scale", "write_gate", "decay", "xl_cache", "query_gate", "memory_add")


@dataclasses.dataclass(frozen=True)
class InfiniConfig:
  """model.infini: the update rule, the gates' start β (sigmoid(β) is the memory read's share),
  and the options beyond the paper (docs/RESULTS.md measures them), each explained in
  options.py: memory_scale (MemoryScale), write_gate (WriteGate), decay (Decay), query_gate
  (QueryGate), memory_add (Gate's additive mix), xl_cache (the context is Transformer-XL's: the
  segment and the one before) and rule=deltanet (DeltaNet)."""

  rule: str = "linear"
  gate_init: float = 0.0
  memory_scale: bool = False
  write_gate: bool = False
  decay: bool = False
  xl_cache: bool = False
  query_gate: bool = False
  memory_add: bool = False

  def __post_init__(self):
    need(self.rule in RULE_NAMES, "infini.rule", self.rule, f"use one of {RULE_NAMES}")
    need(is_finite(self.gate_init), "infini.gate_init", self.gate_init, "must be a finite number")
    need(not (self.memory_scale and self.rule == "deltanet"), "infini.memory_scale",
         self.memory_scale, "has no effect with rule='deltanet', whose features are unit length "
         "whatever the scale: turn one of them off")

  def options(self) -> list[str]:
    """The options that are on."""
    return [name for name, on in dataclasses.asdict(self).items() if name in OPTIONS and on]


class CompressiveMemory(NamedTuple):
  M: jax.Array  # [B, K, H, V] float32
  z: jax.Array  # [B, K, H] float32


class InfiniState(NamedTuple):
  memory: CompressiveMemory
  context: Any = None  # the context's state: None for the segment alone, an XLCache with xl_cache


def sigma(x: jax.Array) -> jax.Array:
  """ELU + 1 in float32, as exp(x) for x <= 0: `expm1(x) + 1` loses all precision there."""
  x = x.astype(jnp.float32)
  return jnp.where(x > 0, x + 1.0, jnp.exp(jnp.minimum(x, 0.0)))


# The floor of the read's normaliser σ(q)z. A memory written with weights near 0 (a write gate that
# has closed, sigmoid(-80) ~ 1e-35) has z ~ 1e-35: the ratio σ(q)M / σ(q)z stays finite, but its
# gradient -num / den² overflows, and training stopped on a NaN gradient at a finite loss. Memories
# that hold anything hold far more (z grows by σ(k) w per token, den by σ(q) z: O(1) and up).
DEN_FLOOR = 1e-6


def divide(num: jax.Array, den: jax.Array) -> jax.Array:
  """num / den[..., None] with den floored at DEN_FLOOR: the empty memory (num = 0, den = 0)
  reads exactly 0, and a nearly empty one reads nearly 0, with finite gradients."""
  return num / jnp.maximum(den, DEN_FLOOR)[..., None]


class Linear:
  """The paper's linear rule: features σ, the normalised read (eq. 3), the additive write (4)."""

  features = staticmethod(sigma)

  def flops(self, N: int, K: int, H: int, T: int) -> float:
    del T  # per token: σ(q)M and σ(q)z; σ(k)ᵀv (z's update is a sum, not a matmul)
    return 2 * N * H * H + 2 * N * H + 2 * K * H * H

  def read(self, memory: CompressiveMemory, fq: jax.Array) -> jax.Array:
    """Features fq [B, T, K, G, H] -> [B, T, K, G, V]."""
    num = jnp.einsum("BTKGH,BKHV->BTKGV", fq, memory.M)
    den = jnp.einsum("BTKGH,BKH->BTKG", fq, memory.z)
    return divide(num, den)

  def write(self, memory: CompressiveMemory, fk, v, w) -> CompressiveMemory:
    """Features fk [B, T, K, H], values v [B, T, K, V], weights w [B, T, K] (0 on padding)."""
    fk = fk * w[..., None]
    return CompressiveMemory(memory.M + jnp.einsum("BTKH,BTKV->BKHV", fk, v),
                             memory.z + jnp.einsum("BTKH->BKH", fk))


class Delta(Linear):
  """eq. 5: write only what the memory does not already return for the key."""

  def flops(self, N: int, K: int, H: int, T: int) -> float:
    return super().flops(N, K, H, T) + 2 * K * H * H + 2 * K * H

  def write(self, memory, fk, v, w):
    return super().write(memory, fk, v - self.read(memory, fk[:, :, :, None])[:, :, :, 0], w)


class Infini(nnx.Module):
  """The memory of one attention layer. `layer` (infini_jax/attention.py) gives the local path;
  q [B, T, N, H], k [B, T, K, H], v [B, T, K, V], mask [B, T] (False on padding)."""

  def __init__(self, num_heads: int, num_kv_heads: int, head_dim: int, *, rule, context,
               gate: Gate, options=None):
    self.N, self.K, self.H = num_heads, num_kv_heads, head_dim
    self.rule, self.context, self.gate = rule, context, gate
    self.options = nnx.Dict(options or {})  # name -> Option, applied in this order

  def init_state(self, batch: int) -> InfiniState:
    K, H = self.K, self.H
    memory = CompressiveMemory(M=jnp.zeros((batch, K, H, H), jnp.float32),
                               z=jnp.zeros((batch, K, H), jnp.float32))
    return InfiniState(memory, self.context.init_state(batch))

  def footprint(self) -> int:
    return self.K * (self.H * self.H + self.H) + self.context.footprint()

  def flops(self, N: int, T: int) -> tuple[float, float]:
    keys, extra = self.context.flops(N, T)
    extra += self.rule.flops(N, self.K, self.H, T)
    parts = [*self.options.values(), self.gate]
    return keys, extra + sum(o.flops(N, self.K, self.H) for o in parts)

  def __call__(self, layer, x, q, k, v, state: InfiniState, mask):
    a_dot, context = self.context(layer, x, q, k, v, state.context, mask)  # [B, T, N, V]
    a_mem = self.read(state.memory, q)
    w = jnp.ones(k.shape[:3], jnp.float32) if mask is None else jnp.broadcast_to(
        mask[:, :, None], k.shape[:3]).astype(jnp.float32)  # [B, T, K]
    memory = self.write(state.memory, k, v, w, mask)  # after the read: no token reads itself
    return self.gate(a_mem, a_dot, q), InfiniState(memory, context)

  def read(self, memory: CompressiveMemory, q: jax.Array) -> jax.Array:
    """eq. 3 for q [B, T, N, H] -> [B, T, N, V]; query head n reads key/value head n // G."""
    B, T, N, H = q.shape
    for o in self.options.values():
      q = o.query(q)
    fq = self.rule.features(q).reshape(B, T, self.K, N // self.K, H)
    return self.rule.read(memory, fq).reshape(B, T, N, -1)

  def write(self, memory, k, v, w, mask) -> CompressiveMemory:
    """eqs. 4-5 for k [B, T, K, H], v [B, T, K, V], weights w [B, T, K]."""
    for o in self.options.values():
      w = o.weigh(k, w)
    for o in self.options.values():
      k, memory = o.key(k), o.fade(memory, mask)
    return self.rule.write(memory, self.rule.features(k), v.astype(jnp.float32), w)

  # Decoding: tokens of the current segment read the memory of the completed ones.

  def init_cache(self, batch: int, T: int, dtype) -> KVCache:
    return self.context.init_cache(batch, T, dtype)

  def extend(self, layer, q, state: InfiniState, cache: KVCache, q_pos):
    a_dot = self.context.extend(layer, q, state.context, cache, q_pos)
    return self.gate(self.read(state.memory, q), a_dot, q)

  def flush(self, layer, state: InfiniState, cache: KVCache) -> InfiniState:
    w = jnp.ones(cache.k.shape[:3], jnp.float32)
    return InfiniState(self.write(state.memory, cache.k, cache.v, w, None),
                       self.context.flush(layer, state.context, cache))
