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
  # Only programs that took half a second to compile (train and eval steps, not the single ops of
  # eager code): jax's size-limited cache lists the whole folder at every write, so thousands of
  # tiny entries made the eager tests 5x slower than alone (tests/test_attention.py: 110 s
  # against 22 s).
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.5"
  os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "-1"
  # The tests run tiny programs once each: compiling them is most of the suite's time, running them
  # almost none. LLVM at -O0 compiles the CPU programs about 1.7x faster (tests/test_attention.py
  # alone: 34 s -> 20 s); it changes how fast a program runs, not what it computes.
  os.environ["XLA_FLAGS"] = " ".join(
      f for f in (os.environ.get("XLA_FLAGS", ""), "--xla_backend_optimization_level=0") if f)
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


# The files that take longest (seconds of one core: `pytest --durations=0`), started first: under
# `make test` each file runs whole on one of two workers, so a long file left for last would run
# alone while the other worker idles.
SLOWEST_FIRST = ("test_train", "test_options", "test_generate", "test_multihost", "test_baselines",
                 "test_sharding", "test_model")


def pytest_collection_modifyitems(items):
  rank = {name: i for i, name in enumerate(SLOWEST_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.stem, len(rank)))  # stable: the rest as before
