"""The paper's memories behind the segment-memory interface: Infini-attention and local-only.

Infini: local causal attention inside the segment, gated with a read of the compressive memory
of all earlier segments, which is then updated with the segment (infini_jax/memory.py).
Local: attention inside the segment only, no state (also `full`, whose one segment is the whole
training length).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

from infini_jax import memory as memlib
from infini_jax.memories.xl import XL, XLCache


class InfiniXLState(NamedTuple):
  """model.xl_cache: the compressive memory and the previous segment's keys and values."""

  memory: memlib.CompressiveMemory
  cache: XLCache


@dataclasses.dataclass(frozen=True)
class Infini:
  K: int
  H: int
  rule: str
  # model.memory_scale: a learned per-key/value-head scale on q and k before σ (see
  # InfiniAttention.memory_qk); off (the paper's σ(q), σ(k)) by default.
  scaled: bool = False
  # model.write_gate: a learned strength per token for each write (InfiniAttention.write_strength).
  write_gated: bool = False
  # model.memory_decay: a learned per-head fade of earlier writes (InfiniAttention.decay).
  decayed: bool = False
  # model.xl_cache: the local path also attends to the previous segment (Transformer-XL's cache).
  xl: XL | None = None
  # model.query_gate: the gate's logit also has a learned term q·w per token (InfiniAttention.mix).
  query_gated: bool = False
  # model.memory_add: the gated read is added to the local output, not mixed with it.
  additive: bool = False
  gated = True

  @classmethod
  def of(cls, cfg) -> "Infini":
    return cls(cfg.num_kv_heads, cfg.head_dim, cfg.rule, scaled=cfg.memory_scale,
               write_gated=cfg.write_gate, decayed=cfg.memory_decay,
               xl=XL.of(cfg) if cfg.xl_cache else None, query_gated=cfg.query_gate,
               additive=cfg.memory_add)

  def init_state(self, batch: int):
    memory = memlib.init_memory(batch, self.K, self.H, self.H)
    if self.xl is None:
      return memory
    return InfiniXLState(memory, self.xl.init_state(batch))

  def footprint(self) -> int:
    cache = 0 if self.xl is None else self.xl.footprint()
    return memlib.state_size(self.K, self.H, self.H) + cache

  def __call__(self, layer, x, q, k, v, state, mask):
    if self.xl is None:
      local = layer.local(q, k, v, mask)  # [B, T, N, V] float32
    else:
      state, cache = state
      local, cache = self.xl(layer, x, q, k, v, cache, mask)  # the segment and the one before
    out, state = self._mix(layer, local, q, k, v, state, mask)
    return out, (state if self.xl is None else InfiniXLState(state, cache))

  def _mix(self, layer, local, q, k, v, state, mask):
    """The paper's eq. 6: the memory read gated with the local output, then the write."""
    mq, mk = layer.memory_qk(q, k)
    a_mem = memlib.retrieve(state, mq, self.rule)  # no position encoding on the memory path
    strength = layer.write_strength(k)  # None without model.write_gate
    state = memlib.update(state, mk, v, self.rule, mask, strength, layer.decay())  # after the read
    return layer.mix(a_mem, local, q), state


@dataclasses.dataclass(frozen=True)
class Local:
  gated = False

  @classmethod
  def of(cls, cfg) -> "Local":
    del cfg
    return cls()

  def init_state(self, batch: int) -> None:
    del batch
    return None

  def footprint(self) -> int:
    return 0

  def __call__(self, layer, x, q, k, v, state, mask):
    del x
    return layer.local(q, k, v, mask), state
