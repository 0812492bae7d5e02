"""The options beyond the paper (model.token_shift, and model.infini's memory_scale, write_gate,
decay, xl_cache, query_gate, memory_add and rule=deltanet) and the teacher-forced passkey scorer
that works for every memory."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from infini_jax import evaluate
from infini_jax import generate as gen
from infini_jax import memories
from infini_jax import optim
from infini_jax.memories import options as opts
from infini_jax.memories.infini import CompressiveMemory
from tests.conftest import TINY

T = TINY.shape.segment_len
H = TINY.shape.head_dim
forward = nnx.jit(lambda model, x: model(x))


def memory(model):
  """The (stacked) memory module of the model's first stage."""
  return model.stages[0].blocks.attn.memory


def option(model, kind):
  return next(o for o in memory(model).options.values() if isinstance(o, kind))


def put(variable, value):
  """Sets a stacked [layers, ...] parameter to `value` in every layer."""
  variable[...] = jnp.broadcast_to(jnp.asarray(value, variable.dtype), variable.shape)


def first_block(model):
  """Layer 0 of the first stage as a Block of its own (parameters unstacked)."""
  graphdef, state = nnx.split(model.stages[0].blocks)
  return nnx.merge(graphdef, jax.tree.map(lambda a: a[0], state))


def per_layer(grads, *path):
  """max |gradient| per layer [layers] of the memory parameter at `path` under attn/memory."""
  g = grads["stages"][0]["blocks"]["attn"]["memory"]
  for key in path:
    g = g[key]
  g = np.abs(np.asarray(g[...]))
  return g.reshape(g.shape[0], -1).max(axis=1)


def label(params, *path):
  node = optim.param_labels(params)["stages"][0]["blocks"]["attn"]["memory"]
  for key in path:
    node = node[key]
  return node


def paper(k, v, w=None, fade=None, memory_state=None):
  """The paper's linear memory (no option) written with k [B, T, K, H], v and weights w."""
  plain = memories.Infini(TINY.shape.num_heads, TINY.shape.num_kv_heads, H, rule=memories.Linear(),
                          context=memories.Local(TINY.shape.num_kv_heads, H),
                          gate=memories.Gate(TINY.shape.num_heads, 0.0))
  state = plain.init_state(k.shape[0]).memory if memory_state is None else memory_state
  if fade is not None:
    state = CompressiveMemory(state.M * fade[:, None, None], state.z * fade[:, None])
  w = jnp.ones(k.shape[:3], jnp.float32) if w is None else w
  return plain.write(state, k, v, w, None)


def tokens(seed, length, batch=2):
  return np.asarray(jax.random.randint(jax.random.key(seed), (batch, length), 1,
                                       TINY.shape.vocab_size))


def test_token_shift_carries_the_last_tokens_across_segments(make_model):
  """memory=local has no path between segments but the shift: changing the last token of
  segment 1 reaches segment 2 (through its first tokens' inputs) and no further."""
  x = tokens(0, 3 * T)
  y = x.copy()
  y[:, T - 1] = (y[:, T - 1] + 1) % TINY.shape.vocab_size
  for shift in (0, 2):
    model = make_model(memory="local", token_shift=dict(size=shift))
    a, _ = forward(model, x)
    b, _ = forward(model, y)
    changed = np.abs(np.asarray(a) - np.asarray(b)).max(axis=(0, 2)) > 1e-6  # [L]
    assert not changed[:T - 1].any() and changed[T - 1]
    assert changed[T:2 * T].all() == bool(shift) and not changed[T:2 * T].any() == (not shift)
    assert not changed[2 * T:].any()  # segment 3 shifts in segment 2's (unchanged) tokens


def test_token_shift_state_makes_chunks_equal_one_pass(make_model):
  model = make_model(infini=dict(rule="delta"), token_shift=dict(size=3))
  x = tokens(1, 4 * T)
  whole, _ = forward(model, x)
  first, state = model(x[:, :T])
  second, _ = model(x[:, T:], state)
  np.testing.assert_allclose(np.concatenate([first, second], 1), whole, rtol=1e-5, atol=1e-5)
  assert model.init_state(2).parts[0].shape == (2, 3)


def test_token_shift_started_at_zero_is_the_model_without_it_and_learns(make_model):
  """token_shift_init=0: the same outputs as no shift at the start (the shift draws no random
  numbers, so the other parameters match), and a gradient that brings the previous tokens in."""
  plain, shifted = make_model(seed=0), make_model(seed=0, token_shift=dict(size=3, init=0.0))
  x = tokens(3, 2 * T)
  np.testing.assert_allclose(forward(shifted, x)[0], forward(plain, x)[0], rtol=1e-6, atol=1e-6)
  graphdef, params = nnx.split(shifted)
  grads = jax.grad(lambda p: nnx.merge(graphdef, p)(x)[0].std())(params)
  assert np.all(np.abs(np.asarray(grads["parts"][0]["mix"][...])).max(axis=1) > 0)  # every offset
  ones = make_model(seed=0, token_shift=dict(size=3))  # the default start: every offset at weight 1
  np.testing.assert_array_equal(np.asarray(ones.parts[0].mix[...]), 1.0)
  assert np.abs(np.asarray(forward(ones, x)[0]) - np.asarray(forward(plain, x)[0])).max() > 1e-3


def test_memory_scale_starts_as_the_paper_and_is_learned(make_model):
  plain, scaled = make_model(seed=0), make_model(seed=0, infini=dict(memory_scale=True))
  x = tokens(2, 3 * T)
  np.testing.assert_allclose(forward(scaled, x)[0], forward(plain, x)[0], rtol=1e-6, atol=1e-6)

  graphdef, params = nnx.split(scaled)
  loss = lambda p: nnx.merge(graphdef, p)(x)[0].std()  # noqa: E731
  grads = jax.grad(loss)(params)
  assert per_layer(grads, "options", "memory_scale", "log_scale").min() > 0
  # no weight decay, the gate's rate
  assert label(params, "options", "memory_scale", "log_scale") == "gate"


def test_memory_scale_reads_and_writes_with_scaled_features(make_model):
  """With log-scale s, the layer's memory equals the paper's memory fed exp(s) q and exp(s) k."""
  model = make_model(shape=dict(num_layers=1), infini=dict(memory_scale=True))
  put(option(model, opts.MemoryScale).log_scale, jnp.log(jnp.array([0.5, 3.0])))
  attn = first_block(model).attn
  x = jax.random.normal(jax.random.key(3), (2, T, TINY.shape.d_model))
  state = attn.memory.init_state(2)
  _, state = attn(x, state)
  _, state = attn(x, state)
  q = jnp.einsum("BTD,DNH->BTNH", x, attn.wq[...])
  k, v = attn.project_kv(x)
  s = jnp.array([0.5, 3.0])
  ref = paper(k * s[:, None], v)
  np.testing.assert_allclose(paper(k * s[:, None], v, memory_state=ref).M, state.memory.M,
                             rtol=1e-5)
  # Query head n reads with kv head n // 2's scale.
  scale = attn.memory.options["memory_scale"]
  np.testing.assert_allclose(scale.query(q), q * jnp.repeat(s, 2)[:, None], rtol=1e-6)


def test_memory_scale_decoding_equals_the_scan(make_model):
  model = make_model(infini=dict(memory_scale=True, rule="delta"))
  put(option(model, opts.MemoryScale).log_scale, jnp.array([0.7, -0.4]))
  put(memory(model).gate.beta, jnp.linspace(-2.0, 2.0, TINY.shape.num_heads))
  x = tokens(4, 3 * T + 2)
  want, _ = forward(model, x)
  decoder = gen.Decoder(model, chunk_segments=2)
  logits, _ = decoder.feed(decoder.start(2), x)
  np.testing.assert_allclose(logits, want[:, -1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("rule", ["linear", "delta"])
def test_write_gate_starts_as_the_paper_and_is_learned(make_model, rule):
  """At init every token writes with strength 1/2, which scales M and z alike: the paper's read."""
  plain = make_model(seed=0, infini=dict(rule=rule))
  gated = make_model(seed=0, infini=dict(rule=rule, write_gate=True))
  x = tokens(2, 3 * T)
  np.testing.assert_allclose(forward(gated, x)[0], forward(plain, x)[0], rtol=1e-5, atol=1e-5)
  graphdef, params = nnx.split(gated)
  grads = jax.grad(lambda p: nnx.merge(graphdef, p)(x)[0].std())(params)
  for name in ("w", "b"):
    assert per_layer(grads, "options", "write_gate", name).min() > 0, name
    assert label(params, "options", "write_gate", name) == "gate"  # no decay, the gate's rate


def test_write_gate_weighs_each_token_by_its_key(make_model):
  """The layer's memory is the paper's, each token writing with weight sigmoid(k·w + b) per
  key/value head."""
  model = make_model(shape=dict(num_layers=1), infini=dict(write_gate=True))
  gate = option(model, opts.WriteGate)
  gate.w[...] = jax.random.normal(jax.random.key(5), gate.w.shape)
  put(gate.b, jnp.array([1.0, -2.0]))
  attn = first_block(model).attn
  x = jax.random.normal(jax.random.key(3), (2, T, TINY.shape.d_model))
  _, state = attn(x, attn.memory.init_state(2))
  k, v = attn.project_kv(x)
  w = attn.memory.options["write_gate"].w[...]
  beta = jax.nn.sigmoid(jnp.einsum("BTKH,KH->BTK", k, w) + jnp.array([1.0, -2.0]))
  want = paper(k, v, beta)
  np.testing.assert_allclose(state.memory.M, want.M, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(state.memory.z, want.z, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("rule", ["delta", "deltanet"])
def test_write_gate_decoding_equals_the_scan(make_model, rule):
  model = make_model(infini=dict(write_gate=True, rule=rule))
  w = option(model, opts.WriteGate).w
  w[...] = jax.random.normal(jax.random.key(0), w.shape)
  x = tokens(4, 3 * T + 2)
  want, _ = forward(model, x)
  decoder = gen.Decoder(model, chunk_segments=2)
  logits, _ = decoder.feed(decoder.start(2), x)
  np.testing.assert_allclose(logits, want[:, -1], rtol=1e-5, atol=1e-5)


def test_memory_decay_fades_the_memory_is_learned_and_decodes_as_scanned(make_model):
  model = make_model(shape=dict(num_layers=1), infini=dict(decay=True))
  attn = first_block(model).attn
  gamma = np.asarray(attn.memory.options["memory_decay"].value())
  assert gamma.shape == (2,) and 0.4 < gamma.min() < gamma.max() < 1.0  # spread over heads
  np.testing.assert_allclose(model.decays(), gamma[None], rtol=1e-6)
  reported = dict(evaluate.Gates(None).run(model))  # the gates evaluator reports each γ
  assert [reported[f"decay/layer0/head{j}"] for j in range(2)] == pytest.approx(gamma.tolist())
  # The layer's memory after two segments is the paper's, faded by γ before each write.
  x = jax.random.normal(jax.random.key(3), (2, T, TINY.shape.d_model))
  _, state = attn(x, attn.memory.init_state(2))
  _, state = attn(x, state)
  k, v = attn.project_kv(x)
  want = paper(k, v, fade=gamma, memory_state=paper(k, v, fade=gamma))
  np.testing.assert_allclose(state.memory.M, want.M, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(state.memory.z, want.z, rtol=1e-5, atol=1e-6)

  model = make_model(infini=dict(decay=True, rule="delta"))
  x = tokens(4, 3 * T + 2)
  graphdef, params = nnx.split(model)
  grads = jax.grad(lambda p: nnx.merge(graphdef, p)(x)[0].std())(params)
  assert per_layer(grads, "options", "memory_decay", "logit").min() > 0
  # no weight decay, the gate's rate
  assert label(params, "options", "memory_decay", "logit") == "gate"
  want, _ = forward(model, x)
  decoder = gen.Decoder(model, chunk_segments=2)
  logits, _ = decoder.feed(decoder.start(2), x)
  np.testing.assert_allclose(logits, want[:, -1], rtol=1e-5, atol=1e-5)


def test_xl_cache_is_xl_beside_the_paper_memory(make_model):
  """With the gates shut the layer is Transformer-XL's; the compressive memory it carries is the
  paper's; chunks of the stream equal one pass. (Decoding it: tests/test_generate.py.)"""
  x = tokens(6, 3 * T + 3)
  cached, xl = make_model(seed=0, infini=dict(xl_cache=True)), make_model(seed=0, memory="xl")
  put(memory(cached).gate.beta, -1e9)  # sigmoid 0: local path only
  np.testing.assert_allclose(forward(cached, x)[0], forward(xl, x)[0], rtol=1e-5, atol=1e-5)

  one = make_model(seed=1, shape=dict(num_layers=1), infini=dict(xl_cache=True))
  plain = make_model(seed=1, shape=dict(num_layers=1))
  out, state = forward(one, x)
  np.testing.assert_allclose(state.layers[0].memory.M, forward(plain, x)[1].layers[0].memory.M,
                             rtol=1e-5, atol=1e-6)
  assert memories.footprint(one.cfg) == memories.footprint(plain.cfg) + memories.footprint(
      one.cfg.replace(memory="xl", infini=dict(xl_cache=False)))
  first, carried = one(x[:, :2 * T])
  second, _ = one(x[:, 2 * T:], carried)
  np.testing.assert_allclose(np.concatenate([first, second], 1), out, rtol=1e-5, atol=1e-5)


def test_query_gate_starts_as_the_paper_is_learned_and_decodes_as_scanned(make_model):
  """sigmoid(β + q·w): with w = 0 the paper's gate; once w moves, each token gets its own mix,
  the same in the segment scan and in decoding."""
  x = tokens(7, 3 * T + 2)
  plain, gated = make_model(seed=0), make_model(seed=0, infini=dict(query_gate=True))
  want, _ = forward(plain, x)
  np.testing.assert_allclose(forward(gated, x)[0], want, rtol=1e-6, atol=1e-6)

  graphdef, params = nnx.split(gated)
  grads = jax.grad(lambda p: nnx.merge(graphdef, p)(x)[0].std())(params)
  assert per_layer(grads, "gate", "w").min() > 0
  assert label(params, "gate", "w") == label(params, "gate", "beta") == "gate"  # the gate's rate

  gate_w = memory(gated).gate.w
  gate_w[...] = jax.random.normal(jax.random.key(0), gate_w.shape)
  moved, _ = forward(gated, x)
  assert np.abs(np.asarray(moved) - np.asarray(want)).max() > 1e-3
  decoder = gen.Decoder(gated, chunk_segments=2)
  logits, _ = decoder.feed(decoder.start(2), x)
  np.testing.assert_allclose(logits, moved[:, -1], rtol=1e-5, atol=1e-5)
  # One head's gate per token: with its β at ±∞ the head reads its local context or memory only.
  gate = first_block(gated).attn.memory.gate
  q = jax.random.normal(jax.random.key(9), (2, T, TINY.shape.num_heads, TINY.shape.head_dim))
  N = TINY.shape.num_heads
  a_mem, local = jnp.ones((2, T, N, 4)), jnp.zeros((2, T, N, 4))
  g = np.asarray(gate(a_mem, local, q))[..., 0]  # [B, T, N]: the gate itself
  want_g = jax.nn.sigmoid(gate.beta[...] + jnp.einsum("BTNH,NH->BTN", q, gate.w[...]))
  np.testing.assert_allclose(g, want_g, rtol=1e-6)
  assert g.std(axis=1).min() > 0  # it varies along the segment


def test_memory_add_keeps_the_local_output_and_adds_the_read(make_model):
  """g·A_mem + A_dot: in the first segment (empty memory) the layer is its local path whatever
  the gate, where the paper's mix scales it by 1 - g; later segments add the read, the same
  in the segment scan and in decoding."""
  x = tokens(8, 3 * T + 2)
  local, paper = make_model(seed=0, memory="local"), make_model(seed=0)
  added = make_model(seed=0, infini=dict(memory_add=True))
  put(memory(added).gate.beta, jnp.linspace(-2.0, 2.0, TINY.shape.num_heads))
  want, _ = forward(local, x[:, :T])
  np.testing.assert_allclose(forward(added, x[:, :T])[0], want, rtol=1e-5, atol=1e-5)
  assert np.abs(np.asarray(forward(paper, x[:, :T])[0]) - np.asarray(want)).max() > 1e-3

  out, _ = forward(added, x)
  y = x.copy()
  y[:, 0] = (y[:, 0] + 1) % TINY.shape.vocab_size
  other, _ = forward(added, y)
  assert np.abs(np.asarray(other)[:, -1] - np.asarray(out)[:, -1]).max() > 1e-6  # the read
  decoder = gen.Decoder(added, chunk_segments=2)
  logits, _ = decoder.feed(decoder.start(2), x)
  np.testing.assert_allclose(logits, out[:, -1], rtol=1e-5, atol=1e-5)

  gate = first_block(added).attn.memory.gate
  q = jnp.zeros((2, T, TINY.shape.num_heads, TINY.shape.head_dim))
  N = TINY.shape.num_heads
  ones, zeros = jnp.ones((2, T, N, 4)), jnp.zeros((2, T, N, 4))
  np.testing.assert_allclose(gate(ones, zeros, q)[0, 0, :, 0], gate.value(), rtol=1e-6)
  np.testing.assert_allclose(gate(zeros, ones, q), ones)  # the local output, whole


def test_deltanet_decoding_equals_the_scan_and_chunks_equal_one_pass(make_model):
  model = make_model(infini=dict(rule="deltanet"))
  put(memory(model).gate.beta, jnp.linspace(-2.0, 2.0, TINY.shape.num_heads))
  x = tokens(4, 3 * T + 2)
  want, state = forward(model, x)
  assert np.isfinite(np.asarray(want)).all()
  decoder = gen.Decoder(model, chunk_segments=2)
  logits, _ = decoder.feed(decoder.start(2), x)
  np.testing.assert_allclose(logits, want[:, -1], rtol=1e-5, atol=1e-5)
  # The memory path is used: the last segment's output depends on the first segment's tokens.
  y = x.copy()
  y[:, 0] = (y[:, 0] + 1) % TINY.shape.vocab_size
  other, _ = forward(model, y)
  assert np.abs(np.asarray(other)[:, -1] - np.asarray(want)[:, -1]).max() > 1e-6


def test_options_are_checked(make_model):
  with pytest.raises(ValueError, match="memory_scale=True: has no effect with rule='deltanet'"):
    make_model(infini=dict(memory_scale=True, rule="deltanet"))
  with pytest.raises(ValueError, match=r"model.token_shift.size=-1: must be >= 0"):
    make_model(token_shift=dict(size=-1))
  with pytest.raises(ValueError, match=r"model.token_shift.init=0.0: has no effect without"):
    make_model(token_shift=dict(init=0.0))
  with pytest.raises(ValueError, match=r"model.token_shift.init=nan: must be a finite number"):
    make_model(token_shift=dict(size=2, init=float("nan")))
  # An option of the Infini memory set for another memory: named, with how to unset it.
  for memory, option in (("xl", "write_gate"), ("xl", "memory_scale"), ("local", "decay"),
                         ("xl", "xl_cache"), ("local", "query_gate"), ("xl", "memory_add")):
    with pytest.raises(ValueError, match=rf"model.infini.{option}=True: an option of "
                       rf"memory='infini', not '{memory}': unset it \(--config.model.infini."
                       rf"{option}=false\)"):
      make_model(memory=memory, infini={option: True})


@pytest.mark.parametrize("memory", ["infini", "xl"])
def test_teacher_forced_scoring_equals_greedy_argmax(make_model, memory):
  """Rows of different lengths, replies straddling a segment boundary, chunks of 2 segments:
  the predictions are the argmax of one forward pass over each row alone."""
  model = make_model(memory=memory, token_shift=dict(size=2))
  rows = [(tokens(5, 4 * T - 3, 1)[0], tokens(6, 5, 1)[0]),
          (tokens(7, 2 * T + 1, 1)[0], tokens(8, 3, 1)[0])]
  got = evaluate.TeacherForced(model, chunk_segments=2)(rows)
  for (prompt, reply), pred in zip(rows, got):
    seq = np.concatenate([prompt, reply])
    logits, _ = forward(model, seq[None])
    want = np.argmax(np.asarray(logits)[0, len(prompt) - 1:len(seq) - 1], -1)
    np.testing.assert_array_equal(pred, want)


def test_teacher_forced_equals_greedy_decoding(make_model):
  """Whole-key exact match by teacher forcing is greedy decoding's: the decoder continues a
  prompt with the tokens the scorer predicts."""
  model = make_model(infini=dict(rule="delta"))
  prompt = tokens(9, 3 * T + 5, 1)[0]
  decoded = gen.generate(gen.Decoder(model, chunk_segments=2), [prompt], max_new_tokens=6)[0]
  scored = evaluate.TeacherForced(model, chunk_segments=2)([(prompt, decoded)])[0]
  np.testing.assert_array_equal(scored, decoded)
