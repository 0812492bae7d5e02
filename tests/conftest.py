"""Shared helpers: a tiny model that compiles in seconds on a CPU."""

import jax.numpy as jnp
import pytest
from flax import nnx

from infini_jax.model import InfiniTransformer, ModelConfig, Shape

TINY = ModelConfig(Shape(vocab_size=64, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2,
                         head_dim=8, mlp_dim=64, segment_len=8))


@pytest.fixture
def make_model():
  """make_model(seed=0, **changes) -> a tiny InfiniTransformer: TINY with ModelConfig.replace's
  changes (`make_model(memory="xl", shape=dict(num_layers=1))`)."""

  def make(seed: int = 0, **changes) -> InfiniTransformer:
    return InfiniTransformer(TINY.replace(**changes), rngs=nnx.Rngs(seed))

  return make


def set_gates(model, value) -> None:
  """Every gate β of the model (each layer's `Gate`, stacked [layers, heads]) to `value`, a
  number or a [heads] row."""
  from infini_jax.memories.common import Gate  # noqa: PLC0415
  for _, gate in nnx.iter_graph(model):
    if isinstance(gate, Gate):
      gate.beta[...] = jnp.broadcast_to(jnp.asarray(value, jnp.float32), gate.beta.shape)
