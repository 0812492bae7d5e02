"""Segment memories: one interface for Infini-attention and the paper's baselines.

A segment memory is an nnx.Module that owns its parameters. It turns one segment's projections
(x [B, T, D], q [B, T, N, H], k [B, T, K, H], v [B, T, K, V]), the state left by earlier
segments and the padding mask into the attention output [B, T, N, V] (float32) and the next state:

  memory = build(cfg, layer_index)
  state = memory.init_state(batch)
  out, state = memory(layer, x, q, k, v, state, mask)
  memory.footprint()     # numbers per sequence, the paper's Table 1 formula for this layer
  memory.flops(N, T)     # (keys each query attends to, other matmul FLOPs per token)

and decodes a segment a few tokens at a time: `init_cache`, `extend` (tokens read the state and
the segment's cache), `flush` (the state once the segment is complete). `layer` is the attention
layer (infini_jax/attention.py): `local` (causal attention inside the segment, RoPE applied),
`rope_at` and `project_kv`. RMT is a model-level memory (infini_jax/memories/rmt.py) whose layers
are local.
"""

from __future__ import annotations

from infini_jax.memories.common import Gate, GateParam, MemoryParam
from infini_jax.memories.compressive import Compressive, CompressiveConfig
from infini_jax.memories.infini import RULE_NAMES, Delta, Infini, InfiniConfig, Linear
from infini_jax.memories.local import Local
from infini_jax.memories.memorizing import Memorizing, MemorizingConfig
from infini_jax.memories import options
from infini_jax.memories.rmt import RMTConfig, TokenShiftConfig
from infini_jax.memories.xl import XL

MEMORIES = ("infini", "local", "full", "xl", "memorizing", "compressive", "rmt")
RULES = {"linear": Linear, "delta": Delta, "deltanet": options.DeltaNet}
assert tuple(RULES) == RULE_NAMES


def knn_layer(cfg) -> int:
  """The kNN-augmented layer of a memorizing model: model.memorizing.knn_layer, or 3/4 deep by
  default (the 9th of 12 layers, as in Memorizing Transformers)."""
  k = cfg.memorizing.knn_layer
  return k if k >= 0 else max(cfg.shape.num_layers * 3 // 4 - 1, 0)


def _xl(cfg) -> XL:
  return XL(cfg.shape.segment_len, cfg.shape.num_kv_heads, cfg.shape.head_dim, cfg.dtype)


def _infini(cfg) -> Infini:
  N, K, H, o = cfg.shape.num_heads, cfg.shape.num_kv_heads, cfg.shape.head_dim, cfg.infini
  gate = (options.QueryGate(N, H, o.gate_init, o.memory_add) if o.query_gate
          else Gate(N, o.gate_init, o.memory_add))
  # Named, not numbered: a checkpoint without one option still matches the others by name.
  parts = {"memory_scale": options.MemoryScale(N, K)} if o.memory_scale else {}
  parts |= {"write_gate": options.WriteGate(K, H)} if o.write_gate else {}
  parts |= {"memory_decay": options.Decay(K)} if o.decay else {}
  return Infini(N, K, H, rule=RULES[o.rule](), gate=gate, options=parts,
                context=_xl(cfg) if o.xl_cache else Local(K, H))


def paper(num_heads: int, num_kv_heads: int, head_dim: int, rule: str = "linear",
          gate_init: float = 0.0) -> Infini:
  """The paper's Infini memory, without options (for benchmarks and tests of one layer)."""
  return Infini(num_heads, num_kv_heads, head_dim, rule=RULES[rule](),
                context=Local(num_kv_heads, head_dim), gate=Gate(num_heads, gate_init))


def build(cfg, index: int):
  """The segment memory of layer `index` of a model with ModelConfig `cfg` (validated)."""
  shape = cfg.shape
  if cfg.memory == "infini":
    return _infini(cfg)
  if cfg.memory == "xl" or (cfg.memory == "memorizing" and index != knn_layer(cfg)):
    return _xl(cfg)
  if cfg.memory == "memorizing":
    m = cfg.memorizing
    return Memorizing(m.memory_size, m.topk, shape.num_heads, _xl(cfg), m.gate_init)
  if cfg.memory == "compressive":
    c = cfg.compressive
    return Compressive(shape.segment_len, shape.d_model, c.memory_size, c.compress_rate,
                       shape.num_kv_heads, shape.head_dim, cfg.dtype)
  return Local(shape.num_kv_heads, shape.head_dim)  # local, full, rmt


def footprint(cfg) -> int:
  """The model's memory footprint in numbers per sequence (the paper's Table 1 formulas)."""
  total = sum(build(cfg, i).footprint() for i in range(cfg.shape.num_layers))
  if cfg.memory == "rmt":  # read and write tokens
    total += cfg.shape.d_model * cfg.rmt.memory_tokens * cfg.shape.num_layers * 2
  return total


__all__ = ["Compressive", "CompressiveConfig", "Gate", "GateParam", "Infini", "InfiniConfig",
           "Local", "MemoryParam", "Memorizing", "MemorizingConfig", "RMTConfig",
           "TokenShiftConfig", "XL", "build", "paper", "footprint", "knn_layer", "options",
           "MEMORIES", "RULES"]
