"""The paper's memories behind the segment-memory interface: Infini-attention and local-only.

Infini: local causal attention inside the segment, gated with a read of the compressive memory
of all earlier segments, which is then updated with the segment (infini_jax/memory.py).
Local: attention inside the segment only, no state (also `full`, whose one segment is the whole
training length).
"""

from __future__ import annotations

import dataclasses

from infini_jax import memory as memlib


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
  gated = True

  @classmethod
  def of(cls, cfg) -> "Infini":
    return cls(cfg.num_kv_heads, cfg.head_dim, cfg.rule, cfg.memory_scale, cfg.write_gate,
               cfg.memory_decay)

  def init_state(self, batch: int) -> memlib.CompressiveMemory:
    return memlib.init_memory(batch, self.K, self.H, self.H)

  def footprint(self) -> int:
    return memlib.state_size(self.K, self.H, self.H)

  def __call__(self, layer, x, q, k, v, state, mask):
    del x
    local = layer.local(q, k, v, mask)  # [B, T, N, V] float32
    mq, mk = layer.memory_qk(q, k)
    a_mem = memlib.retrieve(state, mq, self.rule)  # no position encoding on the memory path
    strength = layer.write_strength(k)  # None without model.write_gate
    state = memlib.update(state, mk, v, self.rule, mask, strength, layer.decay())  # after the read
    g = layer.gate_value()[None, None, :, None]  # [1, 1, N, 1]
    return g * a_mem + (1.0 - g) * local, state


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
