"""Shared helpers: a tiny model that compiles in seconds on a CPU."""

import importlib.util
import os
import shutil
import tempfile

# One persistent XLA compilation cache for the whole run, set before jax is imported: pytest-xdist
# workers and the subprocesses of the tests (train.py, the mesh and multi-host workers) inherit it,
# so the program a test compiles again in another process (the same demo run resumed, say) is read
# back instead. The process that starts the run makes a fresh folder (no results across code
# changes) and removes it at the end; the workers find it in their environment (as does a second
# import of this module as tests.conftest).
if "INFINI_TESTS_JAX_CACHE" not in os.environ:
  _CACHE_DIR = os.environ["INFINI_TESTS_JAX_CACHE"] = tempfile.mkdtemp(prefix="jax-cache-")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE_DIR
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "-1"
  if importlib.util.find_spec("filelock"):  # a size limit makes jax lock the folder: 2 workers write
    os.environ["JAX_COMPILATION_CACHE_MAX_SIZE"] = str(8 << 30)

  def pytest_unconfigure(config):
    shutil.rmtree(_CACHE_DIR, ignore_errors=True)

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
