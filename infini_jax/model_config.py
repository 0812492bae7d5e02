"""The model config: the shape, RoPE, one section per memory with that memory's options, and the
numerics. Presets live in configs/models.py; docs/USAGE.md lists the keys.

Each section is a frozen dataclass beside the code it configures (model.infini beside the Infini
memory, model.rope in rope.py, ...) and refuses its own bad values when it is built, naming the
key (model.SECTION.KEY). `ModelConfig.__post_init__` keeps only the checks that span sections:
the memory's settings against the shape, and a memory's options set for another memory.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from infini_jax import memories
from infini_jax.local_attention import IMPLEMENTATIONS
from infini_jax.memories import (MEMORIES, CompressiveConfig, InfiniConfig, MemorizingConfig,
                                 RMTConfig, TokenShiftConfig)
from infini_jax.rope import RoPE
from infini_jax.sections import build, is_finite, need

REMAT_POLICIES: dict[str, Any] = {
    "none": None,  # no rematerialisation: fastest, memory grows with layers and segments
    "full": jax.checkpoint_policies.nothing_saveable,  # keep each layer's input only
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,  # and its matmul outputs
}
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
ATTENTION_IMPLS = tuple(IMPLEMENTATIONS)


@dataclasses.dataclass(frozen=True)
class Shape:
  """model.shape: the sizes of the decoder (and of each segment), the norm's epsilon, and whether
  the unembedding is the embedding's transpose."""

  vocab_size: int
  d_model: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  mlp_dim: int
  segment_len: int
  norm_eps: float = 1e-5
  tie_embeddings: bool = False

  def __post_init__(self):
    for name, value in dataclasses.asdict(self).items():
      if name not in ("norm_eps", "tie_embeddings"):
        need(isinstance(value, int) and value > 0, f"shape.{name}", value,
             "must be a positive integer")
    need(self.num_heads % self.num_kv_heads == 0, "shape.num_heads", self.num_heads,
         f"must be a multiple of model.shape.num_kv_heads={self.num_kv_heads}")
    need(is_finite(self.norm_eps) and self.norm_eps > 0, "shape.norm_eps", self.norm_eps,
         "must be a small positive number (1e-5)")


# model.KEY -> the section's class, in the order of ModelConfig's fields.
SECTIONS = {"shape": Shape, "rope": RoPE, "infini": InfiniConfig, "memorizing": MemorizingConfig,
            "compressive": CompressiveConfig, "rmt": RMTConfig, "token_shift": TokenShiftConfig}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """The model: `memory` picks the segment memory; its section (`infini`, `memorizing`,
  `compressive`, `rmt`) holds its settings, and the other memories' sections are unused.
  `from_dict` builds one from nested mappings (a ConfigDict, a run's config.json), and also
  reads the flat configs of earlier versions; `replace` changes keys of sections."""

  shape: Shape
  memory: str = "infini"
  rope: RoPE = dataclasses.field(default_factory=RoPE)
  infini: InfiniConfig = dataclasses.field(default_factory=InfiniConfig)
  memorizing: MemorizingConfig = dataclasses.field(default_factory=MemorizingConfig)
  compressive: CompressiveConfig = dataclasses.field(default_factory=CompressiveConfig)
  rmt: RMTConfig = dataclasses.field(default_factory=RMTConfig)
  token_shift: TokenShiftConfig = dataclasses.field(default_factory=TokenShiftConfig)
  dtype: str = "float32"  # compute dtype; memory math, softmax, gate and loss stay float32
  param_dtype: str = "float32"
  remat: str = "full"  # per layer, inside the segment scan (REMAT_POLICIES)
  # Causal attention inside a segment (infini_jax/local_attention.py): "blocked" (query blocks
  # over their key prefix; fastest on CPU), "xla" (jax.nn.dot_product_attention: cuDNN flash
  # attention on GPU in bfloat16/float16, XLA's path elsewhere) or "pallas" (the splash
  # attention kernel on TPU, infini_jax/flash_tpu.py).
  attention_impl: str = "blocked"

  def __post_init__(self):
    for key, cls in SECTIONS.items():
      if not isinstance(vars(self)[key], cls):
        raise TypeError(f"model.{key} must be a {cls.__name__}, not {type(vars(self)[key])}: "
                        "build a config from mappings with ModelConfig.from_dict")
    need(self.memory in MEMORIES, "memory", self.memory, f"use one of {MEMORIES}")
    for key, value in (("dtype", self.dtype), ("param_dtype", self.param_dtype)):
      need(value in DTYPES, key, value, f"use one of {tuple(DTYPES)}")
    need(self.remat in REMAT_POLICIES, "remat", self.remat,
         f"use one of {tuple(REMAT_POLICIES)}")
    need(self.attention_impl in ATTENTION_IMPLS, "attention_impl", self.attention_impl,
         f"use one of {ATTENTION_IMPLS}")
    # Across sections: the memory's settings against the shape; another memory's options.
    for option in self.infini.options() if self.memory != "infini" else []:
      need(False, f"infini.{option}", True, f"an option of memory='infini', not {self.memory!r}: "
           f"unset it (--config.model.infini.{option}=false)")
    shape = self.shape
    if self.memory == "memorizing":
      m = self.memorizing
      need(m.topk <= m.memory_size, "memorizing.memory_size", m.memory_size,
           f"memory=memorizing needs at least model.memorizing.topk={m.topk} entries")
      need(m.knn_layer < shape.num_layers, "memorizing.knn_layer", m.knn_layer,
           f"not a layer of model.shape.num_layers={shape.num_layers}")
    if self.memory == "compressive":
      c = self.compressive
      need(c.memory_size >= 1, "compressive.memory_size", c.memory_size,
           "memory=compressive needs >= 1 compressed slots")
      need(shape.segment_len % c.compress_rate == 0, "compressive.compress_rate", c.compress_rate,
           f"must divide model.shape.segment_len={shape.segment_len}")
    if self.memory == "rmt":
      need(self.rmt.memory_tokens >= 1, "rmt.memory_tokens", self.rmt.memory_tokens,
           "memory=rmt needs >= 1 memory tokens (the paper's RMT uses 100s)")

  def replace(self, **changes) -> "ModelConfig":
    """A copy with `changes`: top-level values, or for a section a mapping of its keys to change
    (`cfg.replace(memory="xl", shape=dict(num_layers=4))`); validated as a new config."""
    values = self.to_dict()
    for key, value in changes.items():
      if key in SECTIONS and not isinstance(value, SECTIONS[key]):
        value = {**values[key], **dict(value)}
      values[key] = value
    return ModelConfig.from_dict(values)

  def to_dict(self) -> dict:
    """The nested dict that `from_dict` reads (and configs/models.py makes a ConfigDict of)."""
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, values) -> "ModelConfig":
    """From a nested mapping (a ConfigDict, a run's config.json "model"), or a flat one as
    written by earlier versions (`nest`). An unknown key is a ValueError naming it."""
    values = dict(values)
    if "shape" not in values:
      values = nest(values)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(names))
    if unknown:
      raise ValueError(f"unknown key model.{unknown[0]}; the model config has {names}")
    return cls(**{key: build(SECTIONS[key], value, key) if key in SECTIONS else value
                  for key, value in values.items()})

  def flops_per_token(self) -> float:
    """Forward FLOPs per token: the matmuls the model runs (2 per multiply-add), as
    tests/test_flops.py counts them in its jaxpr, with one convention: segment attention counts
    its whole T x keys square, as peers count it, where the blocked path skips the masked
    triangle of segments longer than its query block."""
    s = self.shape
    D, N, K, H, F, T = (s.d_model, s.num_heads, s.num_kv_heads, s.head_dim, s.mlp_dim,
                        s.segment_len)
    proj = 2 * D * (N * H + 2 * K * H) + 2 * N * H * D  # q, k, v, o
    # RMT runs the stack on p read and p write tokens beside every segment's T tokens.
    positions = T + 2 * self.rmt.memory_tokens if self.memory == "rmt" else T
    total = 0.0
    for first, count in stages(self):
      keys, extra = memories.build(self, first).flops(N, T)  # a memory holds no large arrays
      keys = positions if keys == T else keys
      total += count * (proj + 4 * keys * N * H + extra + 6 * D * F) * positions / T
    return total + 2 * D * s.vocab_size


def stages(cfg: ModelConfig) -> list[tuple[int, int]]:
  """(first layer, count) of each run of identical layers: one run, but for memorizing's kNN
  layer among Transformer-XL layers."""
  if cfg.memory != "memorizing":
    return [(0, cfg.shape.num_layers)]
  k = memories.knn_layer(cfg)
  runs = [(0, k), (k, 1), (k + 1, cfg.shape.num_layers - k - 1)]
  return [(first, count) for first, count in runs if count]


# --- Flat configs: a run's config.json "model" before the sections (one key per setting). ---

# flat key -> its paths (section, key). gate_init and memory_size, once shared by two memories,
# go to the section of the config's memory (`nest`).
FLAT = {
    **{k: (("shape", k),) for k in ("vocab_size", "d_model", "num_layers", "num_heads",
                                    "num_kv_heads", "head_dim", "mlp_dim", "segment_len",
                                    "norm_eps", "tie_embeddings")},
    "rope_theta": (("rope", "theta"),), "rope_scaling": (("rope", "scaling"),),
    "rope_scaling_factor": (("rope", "factor"),),
    "rope_low_freq_factor": (("rope", "low_freq_factor"),),
    "rope_high_freq_factor": (("rope", "high_freq_factor"),),
    "rope_original_max_len": (("rope", "original_max_len"),),
    **{k: (("infini", k),) for k in ("rule", "memory_scale", "write_gate", "xl_cache",
                                     "query_gate", "memory_add")},
    "memory_decay": (("infini", "decay"),),
    "gate_init": (("infini", "gate_init"), ("memorizing", "gate_init")),
    "memory_size": (("memorizing", "memory_size"), ("compressive", "memory_size")),
    "topk": (("memorizing", "topk"),), "knn_layer": (("memorizing", "knn_layer"),),
    "compress_rate": (("compressive", "compress_rate"),),
    "memory_tokens": (("rmt", "memory_tokens"),),
    "token_shift": (("token_shift", "size"),), "token_shift_init": (("token_shift", "init"),),
    **{k: ((k,),) for k in ("memory", "dtype", "param_dtype", "remat", "attention_impl")},
}


def nest(flat) -> dict:
  """A flat model config (all its keys, or some as overrides) -> the nested dict of the same
  settings. gate_init and memory_size go to the section of its memory (gate_init to Infini's but
  for memorizing), or to both sections that had them where it names no memory. A key it does not
  know is a ValueError."""
  flat = dict(flat)
  memory = flat.get("memory")
  out: dict = {}
  for key, value in flat.items():
    if key not in FLAT:
      raise ValueError(f"unknown flat model key {key!r}; the flat keys are {sorted(FLAT)}")
    paths = FLAT[key]
    if memory is not None and key == "memory_size":
      paths = [(memory, key)] if memory in ("memorizing", "compressive") else []
    elif memory is not None and key == "gate_init":
      paths = [("memorizing" if memory == "memorizing" else "infini", key)]
    for path in paths:
      node = out
      for part in path[:-1]:
        node = node.setdefault(part, {})
      node[path[-1]] = value
  return out
