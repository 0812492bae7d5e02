"""memory.py against a float64 NumPy transcription of the paper's equations (3)-(5)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from infini_jax import memory as memlib


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


@pytest.mark.parametrize("rule", memlib.RULES)
@pytest.mark.parametrize("heads", [(4, 4), (4, 2), (6, 1)])  # (N, K): MHA, GQA, MQA
def test_stream_of_segments_matches_numpy(rule, heads):
  N, K = heads
  B, T, H, V, S = 2, 5, 4, 3, 3
  mem = memlib.init_memory(B, K, H, V)
  M, z = np.zeros((B, K, H, V)), np.zeros((B, K, H))
  for s in range(S):
    q, k, v = random((B, T, N, H), 3 * s), random((B, T, K, H), 3 * s + 1), random((B, T, K, V), 3 * s + 2)
    mask = np.ones((B, T), bool)
    mask[1, 3:] = s == S - 1  # the last segment of row 1 ends in padding
    got = memlib.retrieve(mem, jnp.asarray(q, jnp.float32), rule)
    want = np_retrieve(M, z, q, rule)
    assert got.dtype == jnp.float32 and got.shape == (B, T, N, V)
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-6)
    mem = memlib.update(mem, jnp.asarray(k, jnp.float32), jnp.asarray(v, jnp.float32), rule,
                        jnp.asarray(mask))
    M, z = np_update(M, z, k, v, rule, mask)
    np.testing.assert_allclose(mem.M, M, rtol=2e-5, atol=2e-5)
    np.testing.assert_allclose(mem.z, z, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("rule", memlib.RULES)
def test_write_strength_matches_numpy_and_zero_strength_is_no_write(rule):
  B, T, K, H = 2, 6, 2, 4
  mem = memlib.update(memlib.init_memory(B, K, H, H), jnp.asarray(random((B, T, K, H), 0)),
                      jnp.asarray(random((B, T, K, H), 1)), rule)
  k, v = random((B, T, K, H), 2), random((B, T, K, H), 3)
  strength = np.random.default_rng(4).uniform(size=(B, T, K))
  strength[0, 2:4] = 0.0  # tokens 2 and 3 of row 0 write nothing
  mask = np.ones((B, T), bool)
  got = memlib.update(mem, jnp.asarray(k), jnp.asarray(v), rule, jnp.asarray(mask),
                      jnp.asarray(strength))
  M, z = np_update(np.asarray(mem.M, np.float64), np.asarray(mem.z, np.float64), k, v, rule,
                   mask, strength)
  np.testing.assert_allclose(got.M, M, rtol=2e-5, atol=2e-5)
  np.testing.assert_allclose(got.z, z, rtol=2e-5, atol=2e-5)
  skip = mask.copy()
  skip[0, 2:4] = False
  skipped = memlib.update(mem, jnp.asarray(k), jnp.asarray(v), rule, jnp.asarray(skip),
                          jnp.asarray(strength))
  np.testing.assert_allclose(skipped.M, got.M, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("rule", memlib.RULES)
def test_decay_matches_numpy_and_an_all_padding_segment_keeps_the_memory(rule):
  B, T, K, H, S = 2, 4, 3, 4, 3
  decay = np.array([0.5, 0.9, 0.99])
  mem = memlib.init_memory(B, K, H, H)
  M, z = np.zeros((B, K, H, H)), np.zeros((B, K, H))
  for s in range(S):
    k, v = random((B, T, K, H), 2 * s), random((B, T, K, H), 2 * s + 1)
    mask = np.ones((B, T), bool)
    mask[1] = s != 1  # row 1's second segment is all padding
    mem = memlib.update(mem, jnp.asarray(k), jnp.asarray(v), rule, jnp.asarray(mask),
                        decay=jnp.asarray(decay, jnp.float32))
    M, z = np_update(M, z, k, v, rule, mask, decay=decay)
    np.testing.assert_allclose(mem.M, M, rtol=2e-5, atol=2e-5)
    np.testing.assert_allclose(mem.z, z, rtol=2e-5, atol=2e-5)
  # The linear read weighs segment s-j by decay^j: the oldest segment fades most in head 0.
  linear = memlib.update(memlib.init_memory(1, K, H, H), jnp.ones((1, 1, K, H)),
                         jnp.ones((1, 1, K, H)), "linear")
  faded = memlib.update(linear, jnp.ones((1, 1, K, H)), 3 * jnp.ones((1, 1, K, H)), "linear",
                        decay=jnp.asarray(decay, jnp.float32))
  read = memlib.retrieve(faded, jnp.ones((1, 1, K, H)))[0, 0, :, 0]  # [K]
  np.testing.assert_allclose(read, (decay * 1 + 3) / (decay + 1), rtol=1e-5)
  with pytest.raises(ValueError, match="decay must be"):
    memlib.update(mem, jnp.asarray(k), jnp.asarray(v), rule, decay=jnp.ones((2,)))


def test_delta_differs_from_linear_once_memory_is_not_empty():
  B, T, K, H = 1, 4, 1, 3
  k, v = jnp.asarray(random((B, T, K, H), 0)), jnp.asarray(random((B, T, K, H), 1))
  first = {r: memlib.update(memlib.init_memory(B, K, H, H), k, v, r) for r in memlib.RULES}
  # On the empty memory the delta term reads 0, so both rules write the same thing ...
  np.testing.assert_allclose(first["linear"].M, first["delta"].M, rtol=1e-6)
  # ... and writing the same pairs again changes M far less under delta (they are already stored).
  again = {r: memlib.update(first[r], k, v, r) for r in memlib.RULES}
  assert jnp.abs(again["delta"].M - first["delta"].M).sum() < 0.5 * jnp.abs(
      again["linear"].M - first["linear"].M).sum()


@pytest.mark.parametrize("rule", memlib.RULES)
def test_padded_tokens_change_nothing(rule):
  B, T, K, H = 2, 6, 2, 4
  mem = memlib.update(memlib.init_memory(B, K, H, H), jnp.asarray(random((B, T, K, H), 0)),
                      jnp.asarray(random((B, T, K, H), 1)), rule)
  k, v = jnp.asarray(random((B, T, K, H), 2)), jnp.asarray(random((B, T, K, H), 3))
  mask = jnp.arange(T)[None, :] < jnp.array([[4], [T]])  # row 0 has 2 padded tokens
  masked = memlib.update(mem, k, v, rule, mask)
  # Same as writing only the real tokens; the garbage in padded k/v must not matter either.
  trimmed = memlib.update(
      jax.tree.map(lambda x: x[:1], mem), k[:1, :4], v[:1, :4], rule)
  np.testing.assert_allclose(masked.M[0], trimmed.M[0], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(masked.z[0], trimmed.z[0], rtol=1e-5, atol=1e-6)
  garbage = memlib.update(mem, k.at[0, 4:].set(1e3), v.at[0, 4:].set(-1e3), rule, mask)
  np.testing.assert_array_equal(garbage.M, masked.M)
  # An all-padding segment leaves the memory exactly as it was.
  nothing = memlib.update(mem, k, v, rule, jnp.zeros((B, T), bool))
  np.testing.assert_array_equal(nothing.M, mem.M)
  np.testing.assert_array_equal(nothing.z, mem.z)


def test_deltanet_stores_a_key_that_later_writes_do_not_overlap_exactly_and_stays_bounded():
  """What the rule is for: a key written once is read back exactly after any number of writes
  to directions orthogonal to it, repeated writes change nothing, and M never grows."""
  B, T, K, H = 1, 16, 1, 8
  rng = np.random.default_rng(0)
  key = np.zeros((B, 1, K, H)); key[..., 0] = 2.0  # any length: φ makes it unit
  value = rng.normal(size=(B, 1, K, H))
  mem = memlib.update(memlib.init_memory(B, K, H, H), jnp.asarray(key), jnp.asarray(value),
                      "deltanet")
  filler_k = rng.normal(size=(B, T, K, H)); filler_k[..., 0] = 0.0  # orthogonal to the key
  filler_v = rng.normal(size=(B, T, K, H))

  def write(mem, _):
    return memlib.update(mem, jnp.asarray(filler_k, jnp.float32),
                         jnp.asarray(filler_v, jnp.float32), "deltanet"), None

  once, _ = write(mem, None)
  many, _ = jax.lax.scan(write, mem, None, length=500)  # 8,000 writes of the same 16 pairs
  read = lambda m: memlib.retrieve(m, jnp.asarray(key, jnp.float32), "deltanet")  # noqa: E731
  np.testing.assert_allclose(read(many), value, rtol=1e-5, atol=1e-5)
  # The filler pairs converge to stored; writing them again changes nothing (linear would add).
  again, _ = write(many, None)
  np.testing.assert_allclose(again.M, many.M, atol=1e-4)
  assert float(jnp.abs(many.M).max()) < 10 * float(jnp.abs(once.M).max())
  assert (many.z == 0).all()


def test_empty_memory_reads_exact_zero_with_finite_gradients():
  mem = memlib.init_memory(2, 2, 4, 3)
  q = jnp.asarray(random((2, 5, 4, 4), 0), jnp.float32)
  out = memlib.retrieve(mem, q)
  assert (out == 0).all()

  def loss(q, M, z):
    return memlib.retrieve(memlib.CompressiveMemory(M, z), q).sum()

  grads = jax.grad(loss, argnums=(0, 1, 2))(q, mem.M, mem.z)
  assert all(bool(jnp.isfinite(g).all()) for g in grads)


def test_memory_is_float32_whatever_the_input_dtype():
  mem = memlib.init_memory(1, 1, 4, 4)
  k = jnp.asarray(random((1, 3, 1, 4), 0), jnp.bfloat16)
  mem = memlib.update(mem, k, k, "delta")
  assert mem.M.dtype == mem.z.dtype == jnp.float32
  assert memlib.retrieve(mem, k).dtype == jnp.float32


def test_bad_input_names_what_is_wrong():
  mem = memlib.init_memory(2, 2, 4, 3)
  k, v = jnp.zeros((2, 5, 2, 4)), jnp.zeros((2, 5, 2, 3))
  with pytest.raises(ValueError, match="unknown memory update rule 'hebbian'"):
    memlib.update(mem, k, v, "hebbian")
  with pytest.raises(ValueError, match="k must be"):
    memlib.update(mem, jnp.zeros((2, 5, 3, 4)), v, "linear")
  with pytest.raises(ValueError, match="v must be"):
    memlib.update(mem, k, jnp.zeros((2, 5, 2, 4)), "linear")
  with pytest.raises(ValueError, match="mask must be"):
    memlib.update(mem, k, v, "linear", jnp.ones((2, 4), bool))
  with pytest.raises(ValueError, match="strength must be"):
    memlib.update(mem, k, v, "linear", strength=jnp.ones((2, 5)))
  with pytest.raises(ValueError, match="multiple of the memory's key/value heads"):
    memlib.retrieve(mem, jnp.zeros((2, 5, 3, 4)))
  with pytest.raises(ValueError, match="q must be"):
    memlib.retrieve(mem, jnp.zeros((2, 5, 4, 5)))


def test_state_size_is_the_papers_formula():
  mem = memlib.init_memory(1, 8, 128, 128)
  numbers = mem.M.size + mem.z.size
  assert numbers == memlib.state_size(8, 128, 128) == 8 * 128 * (128 + 1)
