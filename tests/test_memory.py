"""The Infini memory (infini_jax/memories/infini.py) and its options' hooks against a float64
NumPy transcription of the paper's equations (3)-(5)."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest

from infini_jax import memories
from infini_jax.memories import infini, options
from infini_jax.memories.infini import CompressiveMemory
from tests.conftest import TINY

RULES = tuple(memories.RULES)


def np_sigma(x):
  return np.where(x > 0, x + 1.0, np.exp(x))  # ELU + 1


def np_unit(x):
  return x / np.linalg.norm(x)


def np_retrieve(M, z, q, rule="linear"):
  """M [B, K, H, V], z [B, K, H], q [B, T, N, H]: head n reads memory n // (N // K)."""
  B, T, N, _ = q.shape
  K, V = M.shape[1], M.shape[3]
  out = np.zeros((B, T, N, V))
  for b in range(B):
    for n in range(N):
      kv = n // (N // K)
      for t in range(T):
        if rule == "deltanet":
          out[b, t, n] = np_unit(q[b, t, n]) @ M[b, kv]
          continue
        sq = np_sigma(q[b, t, n])
        den = sq @ z[b, kv]
        out[b, t, n] = 0.0 if den == 0 else (sq @ M[b, kv]) / den
  return out


def np_update(M, z, k, v, rule, mask, strength=None, decay=None):
  """k [B, T, K, H], v [B, T, K, V], mask [B, T], strength [B, T, K], decay [K]: one segment
  written after the read."""
  M, z = M.copy(), z.copy()
  B, T, K, _ = k.shape
  if strength is None:
    strength = np.ones((B, T, K))
  for b in range(B):
    for kv in range(K):
      if decay is not None and mask[b].any():  # earlier segments fade before the write
        M[b, kv] *= decay[kv]
        z[b, kv] *= decay[kv]
      beta = strength[b, :, kv] * mask[b]  # [T]
      if rule == "deltanet":  # one token at a time, z untouched
        for t in range(T):
          fk = np_unit(k[b, t, kv])
          M[b, kv] += beta[t] * np.outer(fk, v[b, t, kv] - fk @ M[b, kv])
        continue
      sk = np_sigma(k[b, :, kv]) * beta[:, None]  # [T, H]
      vv = v[b, :, kv].copy()  # [T, V]
      if rule == "delta":
        for t in range(T):
          den = sk[t] @ z[b, kv]
          if den != 0:
            vv[t] -= (sk[t] @ M[b, kv]) / den
      M[b, kv] += sk.T @ vv
      z[b, kv] += sk.sum(0)
  return M, z


def random(shape, seed):
  return np.random.default_rng(seed).normal(size=shape)


def layer(N, K, H, rule="linear", parts=()):
  """The paper's memory (Infini) of N query and K key/value heads, with option parts."""
  return memories.Infini(N, K, H, rule=memories.RULES[rule](), context=memories.Local(K, H),
                         gate=memories.Gate(N, 0.0), options={type(p).__name__: p for p in parts})


def empty(B, K, H, V):
  return CompressiveMemory(jnp.zeros((B, K, H, V), jnp.float32), jnp.zeros((B, K, H), jnp.float32))


def write(mem, k, v, rule, mask=None, strength=None, parts=()):
  """One segment's write as `Infini.__call__` makes it: each token's weight is its mask (and a
  given write strength [B, T, K]); the options see the mask too."""
  B, T, K, H = k.shape
  w = jnp.ones((B, T, K), jnp.float32)
  if mask is not None:
    w = w * jnp.asarray(mask, jnp.float32)[:, :, None]
  if strength is not None:
    w = w * jnp.asarray(strength, jnp.float32)
  m = layer(K, K, H, rule, parts)
  return m.write(mem, jnp.asarray(k), jnp.asarray(v), w,
                 None if mask is None else jnp.asarray(mask))


def read(mem, q, rule="linear"):
  B, T, N, H = q.shape
  return layer(N, mem.M.shape[1], H, rule).read(mem, jnp.asarray(q))


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("heads", [(4, 4), (4, 2), (6, 1)])  # (N, K): MHA, GQA, MQA
def test_stream_of_segments_matches_numpy(rule, heads):
  N, K = heads
  B, T, H, V, S = 2, 5, 4, 3, 3
  mem = empty(B, K, H, V)
  M, z = np.zeros((B, K, H, V)), np.zeros((B, K, H))
  for s in range(S):
    q, k = random((B, T, N, H), 3 * s), random((B, T, K, H), 3 * s + 1)
    v = random((B, T, K, V), 3 * s + 2)
    mask = np.ones((B, T), bool)
    mask[1, 3:] = s == S - 1  # the last segment of row 1 ends in padding
    got = read(mem, jnp.asarray(q, jnp.float32), rule)
    want = np_retrieve(M, z, q, rule)
    assert got.dtype == jnp.float32 and got.shape == (B, T, N, V)
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-6)
    mem = write(mem, jnp.asarray(k, jnp.float32), jnp.asarray(v, jnp.float32), rule, mask)
    M, z = np_update(M, z, k, v, rule, mask)
    np.testing.assert_allclose(mem.M, M, rtol=2e-5, atol=2e-5)
    np.testing.assert_allclose(mem.z, z, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("rule", RULES)
def test_write_strength_matches_numpy_and_zero_strength_is_no_write(rule):
  B, T, K, H = 2, 6, 2, 4
  mem = write(empty(B, K, H, H), random((B, T, K, H), 0), random((B, T, K, H), 1), rule)
  k, v = random((B, T, K, H), 2), random((B, T, K, H), 3)
  strength = np.random.default_rng(4).uniform(size=(B, T, K))
  strength[0, 2:4] = 0.0  # tokens 2 and 3 of row 0 write nothing
  mask = np.ones((B, T), bool)
  got = write(mem, k, v, rule, mask, strength)
  M, z = np_update(np.asarray(mem.M, np.float64), np.asarray(mem.z, np.float64), k, v, rule,
                   mask, strength)
  np.testing.assert_allclose(got.M, M, rtol=2e-5, atol=2e-5)
  np.testing.assert_allclose(got.z, z, rtol=2e-5, atol=2e-5)
  skip = mask.copy()
  skip[0, 2:4] = False
  skipped = write(mem, k, v, rule, skip, strength)
  np.testing.assert_allclose(skipped.M, got.M, rtol=1e-6, atol=1e-6)


def test_write_gate_hook_is_the_write_strength():
  """WriteGate weighs each token's write by sigmoid(k·w + b) per key/value head, times its mask."""
  B, T, K, H = 2, 6, 2, 4
  gate = options.WriteGate(K, H)
  gate.w[...] = jnp.asarray(random((K, H), 0), jnp.float32)
  gate.b[...] = jnp.array([1.0, -2.0])
  k, v = random((B, T, K, H), 1), random((B, T, K, H), 2)
  mask = np.ones((B, T), bool)
  mask[1, 4:] = False
  strength = 1 / (1 + np.exp(-(np.einsum("btkh,kh->btk", k, np.asarray(gate.w[...]))
                               + np.array([1.0, -2.0]))))
  got = write(empty(B, K, H, H), k, v, "linear", mask, parts=[gate])
  M, z = np_update(np.zeros((B, K, H, H)), np.zeros((B, K, H)), k, v, "linear", mask, strength)
  np.testing.assert_allclose(got.M, M, rtol=2e-5, atol=2e-5)
  np.testing.assert_allclose(got.z, z, rtol=2e-5, atol=2e-5)


def decay_of(values) -> options.Decay:
  d = options.Decay(len(values))
  d.logit[...] = jnp.log(jnp.asarray(values) / (1 - jnp.asarray(values)))
  return d


@pytest.mark.parametrize("rule", RULES)
def test_decay_matches_numpy_and_an_all_padding_segment_keeps_the_memory(rule):
  B, T, K, H, S = 2, 4, 3, 4, 3
  fade = decay_of([0.5, 0.9, 0.99])
  decay = np.asarray(fade.value(), np.float64)  # γ as the option computes it
  np.testing.assert_allclose(decay, [0.5, 0.9, 0.99], rtol=1e-6)
  mem = empty(B, K, H, H)
  M, z = np.zeros((B, K, H, H)), np.zeros((B, K, H))
  for s in range(S):
    k, v = random((B, T, K, H), 2 * s), random((B, T, K, H), 2 * s + 1)
    mask = np.ones((B, T), bool)
    mask[1] = s != 1  # row 1's second segment is all padding
    mem = write(mem, k, v, rule, mask, parts=[fade])
    M, z = np_update(M, z, k, v, rule, mask, decay=decay)
    np.testing.assert_allclose(mem.M, M, rtol=2e-5, atol=2e-5)
    np.testing.assert_allclose(mem.z, z, rtol=2e-5, atol=2e-5)
  # The linear read weighs segment s-j by decay^j: the oldest segment fades most in head 0.
  ones = jnp.ones((1, 1, K, H))
  linear = write(empty(1, K, H, H), ones, ones, "linear")
  faded = write(linear, ones, 3 * ones, "linear", parts=[fade])
  got = read(faded, ones)[0, 0, :, 0]  # [K]
  np.testing.assert_allclose(got, (decay * 1 + 3) / (decay + 1), rtol=1e-5)


def test_delta_differs_from_linear_once_memory_is_not_empty():
  B, T, K, H = 1, 4, 1, 3
  k, v = jnp.asarray(random((B, T, K, H), 0)), jnp.asarray(random((B, T, K, H), 1))
  first = {r: write(empty(B, K, H, H), k, v, r) for r in ("linear", "delta")}
  # On the empty memory the delta term reads 0, so both rules write the same thing ...
  np.testing.assert_allclose(first["linear"].M, first["delta"].M, rtol=1e-6)
  # ... and writing the same pairs again changes M far less under delta (they are already stored).
  again = {r: write(first[r], k, v, r) for r in ("linear", "delta")}
  assert jnp.abs(again["delta"].M - first["delta"].M).sum() < 0.5 * jnp.abs(
      again["linear"].M - first["linear"].M).sum()


@pytest.mark.parametrize("rule", RULES)
def test_padded_tokens_change_nothing(rule):
  B, T, K, H = 2, 6, 2, 4
  mem = write(empty(B, K, H, H), random((B, T, K, H), 0), random((B, T, K, H), 1), rule)
  k, v = jnp.asarray(random((B, T, K, H), 2)), jnp.asarray(random((B, T, K, H), 3))
  mask = jnp.arange(T)[None, :] < jnp.array([[4], [T]])  # row 0 has 2 padded tokens
  masked = write(mem, k, v, rule, mask)
  # Same as writing only the real tokens; the garbage in padded k/v must not matter either.
  trimmed = write(jax.tree.map(lambda x: x[:1], mem), k[:1, :4], v[:1, :4], rule)
  np.testing.assert_allclose(masked.M[0], trimmed.M[0], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(masked.z[0], trimmed.z[0], rtol=1e-5, atol=1e-6)
  garbage = write(mem, k.at[0, 4:].set(1e3), v.at[0, 4:].set(-1e3), rule, mask)
  np.testing.assert_array_equal(garbage.M, masked.M)
  # An all-padding segment leaves the memory exactly as it was.
  nothing = write(mem, k, v, rule, jnp.zeros((B, T), bool))
  np.testing.assert_array_equal(nothing.M, mem.M)
  np.testing.assert_array_equal(nothing.z, mem.z)


def test_deltanet_stores_a_key_that_later_writes_do_not_overlap_exactly_and_stays_bounded():
  """What the rule is for: a key written once is read back exactly after any number of writes
  to directions orthogonal to it, repeated writes change nothing, and M never grows."""
  B, T, K, H = 1, 16, 1, 8
  rng = np.random.default_rng(0)
  key = np.zeros((B, 1, K, H)); key[..., 0] = 2.0  # any length: φ makes it unit
  value = rng.normal(size=(B, 1, K, H))
  mem = write(empty(B, K, H, H), jnp.asarray(key, jnp.float32), jnp.asarray(value, jnp.float32),
              "deltanet")
  filler_k = rng.normal(size=(B, T, K, H)); filler_k[..., 0] = 0.0  # orthogonal to the key
  filler_v = rng.normal(size=(B, T, K, H))

  def step(mem, _):
    return write(mem, jnp.asarray(filler_k, jnp.float32), jnp.asarray(filler_v, jnp.float32),
                 "deltanet"), None

  once, _ = step(mem, None)
  many, _ = jax.lax.scan(step, mem, None, length=500)  # 8,000 writes of the same 16 pairs
  got = read(many, jnp.asarray(key, jnp.float32), "deltanet")
  np.testing.assert_allclose(got, value, rtol=1e-5, atol=1e-5)
  # The filler pairs converge to stored; writing them again changes nothing (linear would add).
  again, _ = step(many, None)
  np.testing.assert_allclose(again.M, many.M, atol=1e-4)
  assert float(jnp.abs(many.M).max()) < 10 * float(jnp.abs(once.M).max())
  assert (many.z == 0).all()


def test_empty_memory_reads_exact_zero_with_finite_gradients():
  mem = empty(2, 2, 4, 3)
  q = jnp.asarray(random((2, 5, 4, 4), 0), jnp.float32)
  out = read(mem, q)
  assert (out == 0).all()

  def loss(q, M, z):
    return read(CompressiveMemory(M, z), q).sum()

  grads = jax.grad(loss, argnums=(0, 1, 2))(q, mem.M, mem.z)
  assert all(bool(jnp.isfinite(g).all()) for g in grads)


def test_memory_is_float32_whatever_the_input_dtype():
  k = jnp.asarray(random((1, 3, 1, 4), 0), jnp.bfloat16)
  mem = write(empty(1, 1, 4, 4), k, k, "delta")
  assert mem.M.dtype == mem.z.dtype == jnp.float32
  assert read(mem, k).dtype == jnp.float32
  assert layer(1, 1, 4).init_state(1).memory.M.dtype == jnp.float32


def test_sigma_is_exp_to_float32_precision_for_negative_inputs():
  """σ = ELU + 1 is exp(x) for x <= 0. As expm1(x) + 1 in float32 it is 4e-4 relatively off at
  -10, 44% high at -17 and 0 at -20: inputs that memory_scale's exp(s) q reaches."""
  x = np.array([-10.0, -17.0, -20.0, -0.5, 0.0, 0.5, 3.0], np.float32)
  want = np.where(x > 0, x.astype(np.float64) + 1, np.exp(x.astype(np.float64)))
  got = np.asarray(infini.sigma(jnp.asarray(x)), np.float64)
  np.testing.assert_allclose(got, want, rtol=2e-7)
  old = np.asarray(jax.nn.elu(jnp.asarray(x)) + 1.0, np.float64)  # the formula this replaced
  assert (np.abs(old - want) / want)[:3].min() > 1e-4
  assert infini.sigma(jnp.asarray(x, jnp.bfloat16)).dtype == jnp.float32


def test_bad_rules_and_head_counts_name_what_is_wrong():
  with pytest.raises(ValueError, match="model.infini.rule='hebbian': use one of"):
    TINY.replace(infini=dict(rule="hebbian"))
  with pytest.raises(ValueError, match="must be a multiple of"):
    TINY.replace(shape=dict(num_heads=3))


def test_state_size_is_the_papers_formula():
  mem = layer(8, 8, 128)
  state = jax.eval_shape(lambda: mem.init_state(1).memory)
  numbers = state.M.size + state.z.size
  assert numbers == mem.footprint() == 8 * 128 * (128 + 1)


def test_a_nearly_empty_memory_reads_nearly_nothing_with_finite_gradients():
  """A head whose write gate has closed writes with weights ~1e-35: σ(q)M / σ(q)z is a finite
  ratio, but its gradient -num / den² overflowed (training stopped on a NaN gradient at a finite
  loss, step 706 of a book-filler passkey run)."""
  B, T, K, G, H = 1, 4, 2, 2, 8
  keys = jax.random.split(jax.random.key(0), 3)
  fk = memories.Linear.features(jax.random.normal(keys[0], (B, T, K, H)))
  v = jax.random.normal(keys[1], (B, T, K, H))
  fq = memories.Linear.features(jax.random.normal(keys[2], (B, T, K, G, H)))
  empty = CompressiveMemory(jnp.zeros((B, K, H, H)), jnp.zeros((B, K, H)))

  def read_sum(weight):
    written = memories.Linear().write(empty, fk, v, jnp.full((B, T, K), weight))
    return memories.Linear().read(written, fq).sum()

  for weight in (1e-35, 1e-20, 0.0):
    value, grad = jax.value_and_grad(read_sum)(weight)
    assert np.isfinite(value) and np.isfinite(grad), (weight, value, grad)
    assert abs(float(value)) < 1e-3  # (next to) nothing written, (next to) nothing read
  # A memory that holds something reads as the paper's normalised σ(q)M / σ(q)z.
  written = memories.Linear().write(empty, fk, v, jnp.ones((B, T, K)))
  want = (np.einsum("btkgh,bkhv->btkgv", fq, written.M)
          / np.einsum("btkgh,bkh->btkg", fq, written.z)[..., None])
  np.testing.assert_allclose(memories.Linear().read(written, fq), want, rtol=1e-5)
