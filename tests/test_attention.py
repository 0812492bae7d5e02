"""The layer against textbook attention, and its gate."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from infini_jax import memories
from infini_jax.attention import Attention


def np_rope(x, theta=10_000.0):
  """x [T, H] at positions 0..T-1, halves convention."""
  T, H = x.shape
  out = np.empty_like(x)
  for t in range(T):
    for i in range(H // 2):
      a = t * theta ** (-2 * i / H)
      x1, x2 = x[t, i], x[t, i + H // 2]
      out[t, i], out[t, i + H // 2] = x1 * np.cos(a) - x2 * np.sin(a), x2 * np.cos(a) + x1 * np.sin(a)
  return out


def np_causal_attention(x, wq, wk, wv, wo):
  """Textbook causal multi-head attention with GQA: x [T, D]."""
  T = x.shape[0]
  N, K, H = wq.shape[1], wk.shape[1], wq.shape[2]
  heads = []
  for n in range(N):
    kv = n // (N // K)
    q, k, v = np_rope(x @ wq[:, n]), np_rope(x @ wk[:, kv]), x @ wv[:, kv]
    s = q @ k.T / np.sqrt(H) + np.triu(np.full((T, T), -np.inf), 1)
    p = np.exp(s - s.max(-1, keepdims=True))
    heads.append((p / p.sum(-1, keepdims=True)) @ v)
  return np.einsum("NTV,NVD->TD", np.stack(heads), wo)


def layer(memory="infini", gate_init=0.0):
  local = memories.Local(2, 8)
  if memory == "infini":
    memory = memories.Infini(4, 2, 8, rule=memories.Linear(), context=local,
                             gate=memories.Gate(4, gate_init))
  else:
    memory = local
  return Attention(16, 4, 2, 8, memory, rngs=nnx.Rngs(0))


def test_closed_gate_on_one_segment_is_causal_attention():
  x = jax.random.normal(jax.random.key(1), (2, 6, 16))
  attn = layer(gate_init=-1e4)  # sigmoid(-1e4) == 0 exactly in float32
  y, _ = attn(x, attn.init_state(2))
  w = {n: np.asarray(getattr(attn, n)[...], np.float64) for n in ("wq", "wk", "wv", "wo")}
  for b in range(2):
    want = np_causal_attention(np.asarray(x[b], np.float64), **w)
    np.testing.assert_allclose(y[b], want, rtol=1e-4, atol=1e-5)
  # The memory-free variant is the same function.
  local = layer(memory="local")
  np.testing.assert_allclose(local(x, None)[0], y, rtol=1e-6, atol=1e-6)


def test_first_segment_reads_nothing_so_open_gate_halves_local_output():
  x = jax.random.normal(jax.random.key(2), (1, 6, 16))
  closed, half = layer(gate_init=-1e4), layer(gate_init=0.0)
  y_closed, _ = closed(x, closed.init_state(1))
  y_half, state = half(x, half.init_state(1))
  # The empty memory reads exactly 0: A = 0.5 * 0 + 0.5 * A_dot, and no NaN.
  np.testing.assert_allclose(y_half, 0.5 * y_closed, rtol=1e-5, atol=1e-6)
  assert float(state.memory.z.sum()) > 0  # ... and the segment was written after the read


def test_padding_is_not_attended():
  x = jax.random.normal(jax.random.key(3), (1, 6, 16))
  mask = jnp.array([[True] * 4 + [False] * 2])
  attn = layer()
  y, state = attn(x, attn.init_state(1), mask)
  y2, state2 = attn(x.at[:, 4:].set(100.0), attn.init_state(1), mask)
  np.testing.assert_allclose(y[:, :4], y2[:, :4], rtol=1e-6)
  np.testing.assert_array_equal(state.memory.M, state2.memory.M)
  assert bool(jnp.isfinite(y2).all())
