"""The segment-recurrent LM: scan = loop, whole = chunked, causality, memory, gradients."""


import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from infini_jax.model import InfiniTransformer
from tests.conftest import TINY, set_gates


def tokens(seed, length, batch=2, vocab=TINY.shape.vocab_size):
  return jax.random.randint(jax.random.key(seed), (batch, length), 0, vocab)


@pytest.mark.parametrize("rule", ["linear", "delta"])
def test_scan_equals_python_loop_over_segments(make_model, rule):
  model = make_model(infini=dict(rule=rule))
  x = tokens(0, 4 * TINY.shape.segment_len)
  logits, state = model(x)
  loop_state, loop_logits = model.init_state(2), []
  for s in range(4):
    seg = x[:, s * TINY.shape.segment_len:(s + 1) * TINY.shape.segment_len]
    h, loop_state = model.segment(seg, loop_state, jnp.ones(seg.shape, bool))
    loop_logits.append(model.logits(h))
  np.testing.assert_allclose(logits, jnp.concatenate(loop_logits, 1), rtol=1e-5, atol=1e-5)
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(loop_state)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("remat", ["none", "full", "dots"])
def test_whole_sequence_equals_chunked_calls(make_model, remat):
  model = make_model(remat=remat)
  T = TINY.shape.segment_len
  x = tokens(1, 6 * T + 3)  # ends in a partial segment
  whole, whole_state = model(x)
  state, parts = None, []
  for start, stop in [(0, 2 * T), (2 * T, 3 * T), (3 * T, 6 * T + 3)]:
    out, state = model(x[:, start:stop], state)
    parts.append(out)
  np.testing.assert_allclose(jnp.concatenate(parts, 1), whole, rtol=1e-5, atol=1e-5)
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(whole_state)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
  # The loss readout runs the same scan.
  nll, _ = model.nll(x[:, :-1], x[:, 1:])
  want = -jnp.take_along_axis(jax.nn.log_softmax(whole[:, :-1]), x[:, 1:, None], -1)[..., 0]
  np.testing.assert_allclose(nll, want, rtol=1e-5, atol=1e-5)


def test_changing_a_token_changes_no_earlier_output(make_model):
  model = make_model()
  set_gates(model, 2.0)  # mostly memory: leaks through the memory path would show
  x = tokens(2, 5 * TINY.shape.segment_len, batch=1)
  base, _ = model(x)
  for t in (3, TINY.shape.segment_len + 2, 3 * TINY.shape.segment_len):
    changed, _ = model(x.at[0, t].set((x[0, t] + 1) % TINY.shape.vocab_size))
    np.testing.assert_array_equal(changed[:, :t], base[:, :t])
    assert not np.allclose(changed[:, t], base[:, t])


def test_memory_carries_information_only_through_the_state(make_model):
  model = make_model()
  set_gates(model, 0.0)
  T = TINY.shape.segment_len
  x = tokens(3, 3 * T, batch=1)
  y = x.at[:, :T].set((x[:, :T] + 7) % TINY.shape.vocab_size)  # only segment 1 differs
  out_x, _ = model(x)
  out_y, _ = model(y)
  assert np.abs(out_x[:, 2 * T:] - out_y[:, 2 * T:]).max() > 1e-3
  # With the state reset, segment 3 sees nothing of segment 1.
  alone_x, _ = model(x[:, 2 * T:])
  alone_y, _ = model(y[:, 2 * T:])
  np.testing.assert_array_equal(alone_x, alone_y)
  # A model without memory also sees nothing across segments.
  local = make_model(memory="local")
  np.testing.assert_array_equal(local(x)[0][:, 2 * T:], local(y)[0][:, 2 * T:])


def test_gradients_reach_earlier_segments_and_gates_through_memory(make_model):
  model = make_model()
  T = TINY.shape.segment_len
  # Segment 1 uses token ids 0..7 only; segments 2-3 never do, so the gradient on those embedding
  # rows can only come through the memory written in segment 1.
  seg1 = jnp.arange(T)[None] % 8
  rest = 8 + tokens(4, 2 * T, batch=1, vocab=TINY.shape.vocab_size - 8)
  x = jnp.concatenate([seg1, rest], 1)
  loss_mask = jnp.arange(3 * T)[None] >= 2 * T  # loss on segment 3 only

  def loss(model):
    nll, _ = model.nll(x, x, mask=None)
    return jnp.sum(nll * loss_mask)

  grads = nnx.grad(loss)(model)
  assert float(jnp.abs(grads.embed[...][:8]).sum()) > 0
  beta = grads.stages[0].blocks.attn.memory.gate.beta[...]  # [layers, heads]
  assert (jnp.abs(beta).sum(axis=1) > 0).all()
  local_grads = nnx.grad(loss)(make_model(memory="local"))
  assert float(jnp.abs(local_grads.embed[...][:8]).sum()) == 0


def test_million_token_stream_in_bfloat16_stays_finite(make_model):
  model = make_model(dtype="bfloat16", shape=dict(segment_len=512, num_layers=1, d_model=16,
                                                  mlp_dim=32, num_heads=2, num_kv_heads=1))
  set_gates(model, 0.0)
  chunk = 1 << 16
  step = nnx.jit(lambda m, x, s: m(x, s))
  state = model.init_state(1)
  for i in range((1 << 20) // chunk):
    logits, state = step(model, tokens(i, chunk, batch=1), state)
    assert bool(jnp.isfinite(logits).all()), f"non-finite logits in chunk {i}"
  M, z = state.layers[0].memory
  assert M.dtype == jnp.float32 and bool(jnp.isfinite(M).all())
  assert float(z.min()) > 1e4  # a million writes really accumulated


def test_state_size_is_independent_of_length(make_model):
  model = make_model()
  sizes = set()
  for length in (TINY.shape.segment_len, 7 * TINY.shape.segment_len + 1):
    _, state = model(tokens(5, length))
    sizes.add(sum(leaf.size for leaf in jax.tree.leaves(state)))
  K, H = TINY.shape.num_kv_heads, TINY.shape.head_dim
  per_layer = K * (H * H + H)  # M [K, H, V] and z [K, H], V = H
  assert sizes == {2 * TINY.shape.num_layers * per_layer}  # batch 2


def test_parameter_count_is_independent_of_segment_length():
  def count(segment_len):
    cfg = TINY.replace(shape=dict(segment_len=segment_len))
    shapes = nnx.eval_shape(lambda: InfiniTransformer(cfg, rngs=nnx.Rngs(0)))
    return sum(x.size for x in jax.tree.leaves(nnx.state(shapes, nnx.Param)))

  assert count(8) == count(4096) > 0


def test_tiny_model_overfits_one_batch(make_model):
  model = make_model()
  x = tokens(6, 4 * TINY.shape.segment_len + 1)
  optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)

  @nnx.jit
  def train_step(model, optimizer):
    loss, grads = nnx.value_and_grad(lambda m: m.nll(x[:, :-1], x[:, 1:])[0].mean())(model)
    optimizer.update(model, grads)
    return loss

  losses = [float(train_step(model, optimizer)) for _ in range(60)]
  assert losses[-1] < 0.3 * losses[0], losses[::10]


def test_bad_config_is_refused():
  with pytest.raises(ValueError, match="model.remat='sometimes': use one of"):
    TINY.replace(remat="sometimes")
  with pytest.raises(ValueError, match="model.memory='lstm': use one of"):
    TINY.replace(memory="lstm")
  with pytest.raises(ValueError, match="model.infini.rule='hebbian'"):
    TINY.replace(infini=dict(rule="hebbian"))
  with pytest.raises(ValueError, match="must be a multiple of model.shape.num_kv_heads=3"):
    TINY.replace(shape=dict(num_kv_heads=3))
