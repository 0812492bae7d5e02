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
from infini_jax.memories.compressive import Compressive
from infini_jax.memories.infini import Delta, Infini, Linear
from infini_jax.memories.local import Local
from infini_jax.memories.memorizing import Memorizing
from infini_jax.memories import options
from infini_jax.memories.xl import XL

MEMORIES = ("infini", "local", "full", "xl", "memorizing", "compressive", "rmt")
RULES = {"linear": Linear, "delta": Delta, "deltanet": options.DeltaNet}


def knn_layer(cfg) -> int:
  """The kNN-augmented layer of a memorizing model: model.knn_layer, or 3/4 deep by default (the
  9th of 12 layers, as in Memorizing Transformers)."""
  return cfg.knn_layer if cfg.knn_layer >= 0 else max(cfg.num_layers * 3 // 4 - 1, 0)


def _xl(cfg) -> XL:
  return XL(cfg.segment_len, cfg.num_kv_heads, cfg.head_dim, cfg.dtype)


def _infini(cfg) -> Infini:
  N, K, H = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
  gate = (options.QueryGate(N, H, cfg.gate_init, cfg.memory_add) if cfg.query_gate
          else Gate(N, cfg.gate_init, cfg.memory_add))
  # Named, not numbered: a checkpoint without one option still matches the others by name.
  parts = {"memory_scale": options.MemoryScale(N, K)} if cfg.memory_scale else {}
  parts |= {"write_gate": options.WriteGate(K, H)} if cfg.write_gate else {}
  parts |= {"memory_decay": options.Decay(K)} if cfg.memory_decay else {}
  return Infini(N, K, H, rule=RULES[cfg.rule](), gate=gate, options=parts,
                context=_xl(cfg) if cfg.xl_cache else Local(K, H))


def paper(num_heads: int, num_kv_heads: int, head_dim: int, rule: str = "linear",
          gate_init: float = 0.0) -> Infini:
  """The paper's Infini memory, without options (for benchmarks and tests of one layer)."""
  return Infini(num_heads, num_kv_heads, head_dim, rule=RULES[rule](),
                context=Local(num_kv_heads, head_dim), gate=Gate(num_heads, gate_init))


def build(cfg, index: int):
  """The segment memory of layer `index` of a model with ModelConfig `cfg`."""
  if cfg.memory not in MEMORIES:
    raise ValueError(f"unknown model.memory {cfg.memory!r}; use one of {MEMORIES}")
  if cfg.memory == "infini":
    return _infini(cfg)
  if cfg.memory == "xl" or (cfg.memory == "memorizing" and index != knn_layer(cfg)):
    return _xl(cfg)
  if cfg.memory == "memorizing":
    return Memorizing(cfg.memory_size, cfg.topk, cfg.num_heads, _xl(cfg), cfg.gate_init)
  if cfg.memory == "compressive":
    return Compressive(cfg.segment_len, cfg.d_model, cfg.memory_size, cfg.compress_rate,
                       cfg.num_kv_heads, cfg.head_dim, cfg.dtype)
  return Local(cfg.num_kv_heads, cfg.head_dim)  # local, full, rmt


def check(cfg) -> None:
  """Each memory's own settings; raises ValueError with what to change."""
  if cfg.rule not in RULES:
    raise ValueError(f"unknown model.rule {cfg.rule!r}; use one of {tuple(RULES)}")
  if cfg.memory == "memorizing":
    if cfg.memory_size < 1 or not 1 <= cfg.topk <= cfg.memory_size:
      raise ValueError(f"memorizing needs 1 <= model.topk={cfg.topk} <= model.memory_size="
                       f"{cfg.memory_size}")
    if not 0 <= knn_layer(cfg) < cfg.num_layers:
      raise ValueError(f"model.knn_layer={cfg.knn_layer} is not a layer of {cfg.num_layers}")
  if cfg.memory == "compressive" and (cfg.compress_rate < 1 or cfg.segment_len % cfg.compress_rate
                                      or cfg.memory_size < 1):
    raise ValueError(
        f"compressive needs model.compress_rate={cfg.compress_rate} to divide model.segment_len="
        f"{cfg.segment_len} and model.memory_size={cfg.memory_size} >= 1 compressed slots")
  if cfg.memory == "rmt" and cfg.memory_tokens < 1:
    raise ValueError("memory=rmt needs model.memory_tokens >= 1 (the paper's RMT uses 100s)")


def footprint(cfg) -> int:
  """The model's memory footprint in numbers per sequence (the paper's Table 1 formulas)."""
  total = sum(build(cfg, i).footprint() for i in range(cfg.num_layers))
  if cfg.memory == "rmt":
    total += cfg.d_model * cfg.memory_tokens * cfg.num_layers * 2  # read and write tokens
  return total


__all__ = ["Compressive", "Gate", "GateParam", "Infini", "Local", "MemoryParam", "Memorizing",
           "XL", "build", "paper", "check", "footprint", "knn_layer", "options", "MEMORIES", "RULES"]
