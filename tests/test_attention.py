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


def test_cudnn_arguments_honour_a_mask_padded_in_the_middle():
  """attention_impl "xla" on a GPU gives cuDNN the padding as key lengths. RMT's mask pads the
  middle ([True * p, segment mask, True * p]): read as a length it lets the write tokens attend
  to padding. The cuDNN call's arguments, run through XLA's path (same semantics, any backend),
  must give the masked result on every real row, with its gradients."""
  from infini_jax.local_attention import blocked_causal_attention, cudnn_causal_attention

  B, T, N, K, H, p = 2, 32, 4, 2, 8, 4
  kq, kk, kv = jax.random.split(jax.random.key(5), 3)
  q, k, v = (jax.random.normal(s, (B, T, n, H)) for s, n in ((kq, N), (kk, K), (kv, K)))
  pos = jnp.arange(T)
  mask = jnp.stack([(pos < p + 10) | (pos >= T - p), pos < 20])  # middle padding; right padding
  real = mask[:, :, None, None]
  want = blocked_causal_attention(q, k, v, mask)

  lengths = mask.sum(-1).astype(jnp.int32)  # the arguments before: padding read as a length
  before = jax.nn.dot_product_attention(q, k, v, is_causal=True, key_value_seq_lengths=lengths)
  err_before = float(jnp.abs(jnp.where(real, before - want, 0)).max())
  got = cudnn_causal_attention(q, k, v, mask, implementation="xla")
  err = float(jnp.abs(jnp.where(real, got - want, 0)).max())
  print(f"max difference on real rows: lengths {err_before:.3f}, cuDNN arguments {err:.1e}")
  assert err_before > 0.1 and err < 1e-5
  right = jnp.stack([pos < 20, pos < T])  # right padding only: the lengths alone, no move
  np.testing.assert_allclose(
      np.where(right[:, :, None, None], cudnn_causal_attention(q, k, v, right, "xla"), 0),
      np.where(right[:, :, None, None], blocked_causal_attention(q, k, v, right), 0), atol=1e-5)

  w = jax.random.normal(jax.random.key(6), q.shape)
  loss = lambda f: lambda q, k, v: jnp.sum(jnp.where(real, f(q, k, v, mask) * w, 0.0))
  via_cudnn_args = lambda *a: cudnn_causal_attention(*a, implementation="xla")
  g_got = jax.grad(loss(via_cudnn_args), (0, 1, 2))(q, k, v)
  g_want = jax.grad(loss(blocked_causal_attention), (0, 1, 2))(q, k, v)
  for a, b in zip(g_got, g_want):
    np.testing.assert_allclose(a, b, atol=1e-5)
