"""Segment memories: one interface for Infini-attention and the paper's baselines.

A segment memory turns one segment's projections (x [B, T, D], q [B, T, N, H], k [B, T, K, H],
v [B, T, K, V]), the state left by earlier segments and the padding mask into the attention output
[B, T, N, V] (float32) and the next state:

  memory = for_layer(cfg, index)
  state = memory.init_state(batch)
  out, state = memory(layer, x, q, k, v, state, mask)
  memory.footprint()   # numbers per sequence, the paper's Table 1 formula for this layer

`layer` is the attention layer (infini_jax/attention.py): it provides `local` (causal attention
inside the segment, RoPE applied), `rope_at`, `project_kv` and `gate_value` (for `gated` memories,
which get a per-head gate β). RMT is a model-level memory (memory tokens, model.py) whose layers
are local.
"""

from __future__ import annotations

from infini_jax.memories.compressive import Compressive
from infini_jax.memories.infini import Infini, Local
from infini_jax.memories.memorizing import Memorizing
from infini_jax.memories.xl import XL

LAYER_MEMORY = {
    "infini": Infini,
    "local": Local,
    "full": Local,  # one segment spanning the whole training length (config.validate checks it)
    "xl": XL,
    "memorizing": Memorizing,  # the kNN layer; the model's other layers are XL
    "compressive": Compressive,
    "rmt": Local,  # memory tokens at the model level
}
MEMORIES = tuple(LAYER_MEMORY)


def knn_layer(cfg) -> int:
  """The kNN-augmented layer of a memorizing model: model.knn_layer, or 3/4 deep by default (the
  9th of 12 layers, as in Memorizing Transformers)."""
  return cfg.knn_layer if cfg.knn_layer >= 0 else max(cfg.num_layers * 3 // 4 - 1, 0)


def for_layer(cfg, index: int):
  if cfg.memory not in LAYER_MEMORY:
    raise ValueError(f"unknown model.memory {cfg.memory!r}; use one of {MEMORIES}")
  if cfg.memory == "memorizing" and index != knn_layer(cfg):
    return XL.of(cfg)
  return LAYER_MEMORY[cfg.memory].of(cfg)


def footprint(cfg) -> int:
  """The model's memory footprint in numbers per sequence (the paper's Table 1 formulas)."""
  total = sum(for_layer(cfg, i).footprint() for i in range(cfg.num_layers))
  if cfg.memory == "rmt":
    total += cfg.d_model * cfg.memory_tokens * cfg.num_layers * 2  # read and write tokens
  return total
