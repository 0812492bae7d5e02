"""Shared helpers: a tiny model that compiles in seconds on a CPU."""

import dataclasses

import pytest
from flax import nnx

from infini_jax.model import InfiniTransformer, ModelConfig

TINY = ModelConfig(vocab_size=64, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2,
                   head_dim=8, mlp_dim=64, segment_len=8)


@pytest.fixture
def make_model():
  """make_model(seed=0, **overrides) -> a tiny InfiniTransformer with TINY's shape."""

  def make(seed: int = 0, **overrides) -> InfiniTransformer:
    return InfiniTransformer(dataclasses.replace(TINY, **overrides), rngs=nnx.Rngs(seed))

  return make
