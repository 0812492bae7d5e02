"""The paper's baselines behind the segment-memory interface: each one's defining property, its
footprint against the paper's Table 1 formula, and chunked streaming equal to one call."""

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from infini_jax import config as configlib
from infini_jax import memories
from infini_jax.memories.common import fifo
from infini_jax.memories.memorizing import KNNStore, top_k_read
from infini_jax.model import InfiniTransformer
from tests.conftest import TINY

T = TINY.shape.segment_len
# Each memory's section of the model config.
SETTINGS = dict(memorizing=dict(memory_size=3 * T, topk=4), compressive=dict(memory_size=6),
                rmt=dict(memory_tokens=3))


def model(memory, seed=0, **changes):
  """A tiny model of `memory` with its SETTINGS, and ModelConfig.replace's `changes`."""
  cfg = TINY.replace(memory=memory, **{k: v for k, v in SETTINGS.items() if k == memory})
  cfg = cfg.replace(**changes)
  return InfiniTransformer(cfg, rngs=nnx.Rngs(seed))


def tokens(seed, length, batch=1):
  return jax.random.randint(jax.random.key(seed), (batch, length), 0, TINY.shape.vocab_size)


def changed_segment(x, s):
  """x with segment s (0-based) replaced."""
  return x.at[:, s * T:(s + 1) * T].set((x[:, s * T:(s + 1) * T] + 5) % TINY.shape.vocab_size)


def seg(out, s):
  return out[:, s * T:(s + 1) * T]


@pytest.mark.parametrize("memory", ["infini", "local", "xl", "memorizing", "compressive", "rmt"])
def test_chunked_streaming_equals_one_call(memory):
  m = model(memory)
  x = tokens(0, 5 * T + 3, batch=2)
  whole, whole_state = m(x)
  state, parts = None, []
  for a, b in [(0, 2 * T), (2 * T, 3 * T), (3 * T, 5 * T + 3)]:
    out, state = m(x[:, a:b], state)
    parts.append(out)
  np.testing.assert_allclose(jnp.concatenate(parts, 1), whole, rtol=1e-5, atol=1e-5)
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(whole_state)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_full_attends_across_the_whole_input_local_only_inside_segments():
  x = tokens(1, 4 * T)
  full = model("full", shape=dict(segment_len=4 * T))
  local = model("local")
  y = changed_segment(x, 0)
  assert np.abs(seg(full(x)[0], 3) - seg(full(y)[0], 3)).max() > 1e-4
  np.testing.assert_array_equal(seg(local(x)[0], 1), seg(local(y)[0], 1))
  c = importlib.import_module("configs.pg19").get_config("runlocal,memory=full")
  assert c.model.shape.segment_len == c.seq_len
  c.model.shape.segment_len = c.seq_len // 2
  with pytest.raises(ValueError, match="memory=full attends over the whole training length"):
    configlib.validate(c)


def test_xl_sees_exactly_the_previous_segment_and_no_gradient_reaches_its_cache():
  # One layer: the receptive field is this segment and the last.
  m = model("xl", shape=dict(num_layers=1))
  x = tokens(2, 3 * T)
  y = changed_segment(x, 0)
  out_x, out_y = m(x)[0], m(y)[0]
  assert np.abs(seg(out_x, 1) - seg(out_y, 1)).max() > 1e-4
  np.testing.assert_allclose(seg(out_x, 2), seg(out_y, 2), rtol=1e-6, atol=1e-6)

  grad = nnx.grad(lambda m: m.nll(x, x)[0][:, T:2 * T].sum())(m).embed[...]
  used_only_first = np.setdiff1d(np.asarray(x[0, :T]), np.asarray(x[0, T:]))
  assert len(used_only_first) and float(jnp.abs(grad[used_only_first]).max()) == 0.0


def np_top_k_read(k_store, v_store, valid, q, topk):
  B, T_, N, H = q.shape
  K = k_store.shape[2]
  out = np.zeros((B, T_, N, v_store.shape[-1]))
  for b in range(B):
    for n in range(N):
      kv = n // (N // K)
      ids = np.flatnonzero(valid[b])
      for t in range(T_):
        if not len(ids):
          continue
        scores = k_store[b, ids, kv] @ q[b, t, n] / np.sqrt(H)
        best = np.argsort(-scores)[:topk]
        p = np.exp(scores[best] - scores[best].max())
        out[b, t, n] = (p / p.sum()) @ v_store[b, ids[best], kv]
  return out


def test_memorizing_reads_the_exact_top_k_and_evicts_oldest_first():
  rng = np.random.default_rng(0)
  B, M, K, H, N = 2, 10, 2, 4, 4
  ks, vs = rng.normal(size=(B, M, K, H)), rng.normal(size=(B, M, K, H))
  valid = np.ones((B, M), bool)
  valid[1, :6] = False  # row 1 has only 4 entries so far
  q = rng.normal(size=(B, 3, N, H))
  store = KNNStore(jnp.asarray(ks, jnp.float32), jnp.asarray(vs, jnp.float32), jnp.asarray(valid))
  got = top_k_read(store, jnp.asarray(q, jnp.float32), 3)
  np.testing.assert_allclose(got, np_top_k_read(ks, vs, valid, q, 3), rtol=1e-5, atol=1e-6)
  empty = KNNStore(store.k, store.v, jnp.zeros((B, M), bool))
  assert (top_k_read(empty, jnp.asarray(q, jnp.float32), 3) == 0).all()
  # First in, first out: after writing 4 more, the 4 oldest are gone and the new ones are last.
  new = jnp.full((B, 4, K, H), 7.0)
  kept = fifo(store.k, new)
  np.testing.assert_array_equal(kept[:, :6], store.k[:, 4:])
  np.testing.assert_array_equal(kept[:, 6:], new)


def test_memorizing_store_holds_the_latest_segments_keys():
  m = model("memorizing", shape=dict(num_layers=2), memorizing=dict(knn_layer=1))
  x = tokens(3, 4 * T)
  _, state = m(x)
  store = jax.tree.map(lambda a: a[0], state.layers[1].store)  # stage 1: the kNN layer alone
  assert isinstance(store, KNNStore) and store.k.shape[1] == 3 * T
  # Segments 2..4 are in the store (the first was evicted), in order.
  _, upto3 = m(x[:, :3 * T])
  np.testing.assert_allclose(store.k[:, :2 * T], upto3.layers[1].store.k[0, :, T:], rtol=1e-6)
  assert isinstance(state.layers[0], memories.xl.XLCache)  # the other layers are Transformer-XL
  # ... and the kNN layer keeps their cache of the previous segment too (Wu et al.)
  np.testing.assert_array_equal(state.layers[1].xl.k[0], store.k[:, -T:])


def test_rmt_carries_information_only_through_its_memory_tokens():
  m = model("rmt")
  x = tokens(4, 3 * T)
  y = changed_segment(x, 0)
  assert np.abs(seg(m(x)[0], 2) - seg(m(y)[0], 2)).max() > 1e-4
  # Same memory tokens going into segment 3: the same output, whatever came before.
  _, state_x = m(x[:, :2 * T])
  _, state_y = m(y[:, :2 * T])
  out_x, _ = m(x[:, 2 * T:], state_x)
  out_y, _ = m(x[:, 2 * T:], state_x._replace(parts=state_y.parts))
  assert np.abs(out_x - out_y).max() > 1e-4  # only the memory tokens differ ...
  alone, _ = m(x[:, 2 * T:], state_y._replace(parts=state_x.parts))
  np.testing.assert_array_equal(alone, out_x)  # ... and the layers carry nothing else


def test_compressive_keeps_exactly_c_compressed_slots_of_pooled_states():
  m = model("compressive", shape=dict(num_layers=1),
            compressive=dict(compress_rate=4, memory_size=6))
  x = tokens(5, 4 * T)
  _, s2 = m(x[:, :2 * T])
  _, s3 = m(x[:, 2 * T:3 * T], s2)
  cache = jax.tree.map(lambda a: a[0], s3.layers[0])  # the one layer of the stack
  assert cache.coarse.shape == (1, 6, TINY.shape.d_model)
  # Segment 2's layer inputs (the fine memory after two segments), mean-pooled by 4, are the
  # newest T/4 = 2 compressed slots; 6 slots keep the last 3 segments' worth.
  pooled = s2.layers[0].fine[0].reshape(1, T // 4, 4, -1).mean(2)
  np.testing.assert_allclose(cache.coarse[:, -2:], pooled, rtol=1e-5, atol=1e-6)
  assert bool(cache.coarse_valid[:, -4:].all())  # segments 1 and 2 compressed
  assert not bool(cache.coarse_valid[:, :2].any())  # nothing older yet


@pytest.mark.parametrize("memory", ["infini", "xl", "memorizing", "compressive", "rmt"])
def test_state_size_is_the_papers_formula(memory):
  m = model(memory)
  cfg = m.cfg
  D, H, K, l = cfg.shape.d_model, cfg.shape.head_dim, cfg.shape.num_kv_heads, cfg.shape.num_layers
  formula = {
      "infini": H * (H + 1) * K * l,  # d_key (d_value + 1) H l
      "xl": 2 * H * K * T * l,  # (d_key + d_value) H N l
      # (d_key + d_value) H M for the kNN layer, and an XL cache in every layer
      "memorizing": 2 * H * K * cfg.memorizing.memory_size + 2 * H * K * T * l,
      "compressive": D * (cfg.compressive.memory_size + T) * l,  # d_model (c + N) l
      "rmt": D * cfg.rmt.memory_tokens * l * 2,  # d_model p l 2
  }[memory]
  assert memories.footprint(cfg) == formula
  if memory != "rmt":  # RMT carries p tokens; its formula counts their activations in every layer
    assert m.state_size() == formula
  else:
    assert m.state_size() == D * cfg.rmt.memory_tokens


def test_table_2_memory_column():
  """The paper's Table 2 model: Infini 1.6M, XL 50M, RMT 2.5M. Memorizing: the paper lists
  183M; here 185M, its 65K-entry kNN store (134M) and an XL cache in each of the 12 layers
  (50M), as in Wu et al."""
  size = {}
  for memory in ["infini", "xl", "rmt", "memorizing"]:
    cfg = configlib.model_config(importlib.import_module("configs.pg19").get_config(
        f"memory={memory}"))
    size[memory] = memories.footprint(cfg)
  assert round(size["infini"] / 1e6, 1) == 1.6
  assert round(size["xl"] / 1e6) == 50
  assert round(size["rmt"] / 1e6, 1) == 2.5
  assert round(size["memorizing"] / 1e6) == 185


def test_baselines_train_through_the_trainer_config():
  for memory in memories.MEMORIES:
    c = importlib.import_module("configs.pg19").get_config(f"runlocal,memory={memory}")
    assert configlib.validate(c, device_count=1).memory == memory
  with pytest.raises(ValueError, match=r"model.rmt.memory_tokens=0: memory=rmt needs >= 1"):
    TINY.replace(memory="rmt")
  with pytest.raises(ValueError, match=r"model.memorizing.memory_size=4: memory=memorizing needs "
                     "at least model.memorizing.topk=8"):
    TINY.replace(memory="memorizing", memorizing=dict(memory_size=4, topk=8))
