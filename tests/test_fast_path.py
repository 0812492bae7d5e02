"""The fast paths agree with the plain ones: model.attention_impl (the blocked causal attention
and jax.nn.dot_product_attention), and the projections on one token axis (dense.token_einsum).

On CPU the "xla" implementation is XLA's path (cuDNN needs a GPU); float32, forward and
gradients, grouped query heads, padded keys. Rows of padded queries are excluded: the two paths
give them different (finite, ignored) outputs.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from infini_jax import dense
from infini_jax.attention import local_attention
from infini_jax.model import InfiniTransformer, ModelConfig

from conftest import TINY


def _qkv(B=2, T=40, N=4, K=2, H=8, seed=0):
  kq, kk, kv = jax.random.split(jax.random.key(seed), 3)
  return (jax.random.normal(kq, (B, T, N, H)), jax.random.normal(kk, (B, T, K, H)),
          jax.random.normal(kv, (B, T, K, H)))


@pytest.mark.parametrize("kv_heads", [1, 4])
def test_local_attention_impls_agree_with_padding_and_gqa(kv_heads):
  q, k, v = _qkv(K=kv_heads)
  mask = jnp.arange(q.shape[1])[None, :] < jnp.array([[40], [23]])  # row 1: right padding
  w = jax.random.normal(jax.random.key(9), q.shape[:3] + (v.shape[-1],))
  real = mask[:, :, None, None]  # the loss sees real queries only

  def loss(impl, q, k, v):
    out = local_attention(q, k, v, mask, impl)
    return jnp.sum(jnp.where(real, out * w, 0.0)), out

  def run(impl):
    return jax.jit(jax.value_and_grad(lambda *a: loss(impl, *a), (0, 1, 2), has_aux=True))(q, k, v)

  ((l_b, out_b), g_b), ((l_x, out_x), g_x) = run("blocked"), run("xla")
  assert out_x.dtype == jnp.float32
  np.testing.assert_allclose(np.where(real, out_x, 0), np.where(real, out_b, 0), atol=2e-5)
  np.testing.assert_allclose(l_x, l_b, rtol=1e-5)
  for a, b in zip(g_x, g_b):
    np.testing.assert_allclose(a, b, atol=5e-5)


def test_without_mask_every_row_agrees():
  q, k, v = _qkv()
  run = jax.jit(local_attention, static_argnums=(3, 4))
  np.testing.assert_allclose(run(q, k, v, None, "xla"), run(q, k, v, None, "blocked"), atol=2e-5)


def test_model_losses_and_gradients_agree():
  """The model (infini memory, 3 segments of 8, the last partial) under both impls."""
  tokens = jax.random.randint(jax.random.key(1), (2, 21), 0, TINY.shape.vocab_size)
  mask = jnp.arange(21)[None, :] < jnp.array([[21], [13]])

  cfg = TINY.replace(remat="none", shape=dict(num_layers=1))
  params = jax.jit(lambda: nnx.state(InfiniTransformer(cfg, rngs=nnx.Rngs(0))))()

  def loss(params, impl):
    graphdef = nnx.graphdef(nnx.eval_shape(lambda: InfiniTransformer(
        dataclasses.replace(cfg, attention_impl=impl), rngs=nnx.Rngs(0))))
    nll, _ = nnx.merge(graphdef, params).nll(tokens[:, :-1], tokens[:, 1:], mask=mask[:, 1:])
    return nll.sum()

  both = jax.jit(lambda p: [jax.value_and_grad(loss)(p, impl) for impl in ("blocked", "xla")])
  (l_b, g_b), (l_x, g_x) = both(params)
  np.testing.assert_allclose(l_x, l_b, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(g_x), jax.tree.leaves(g_b)):
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4)


def test_unknown_impl_is_refused():
  with pytest.raises(ValueError, match="attention_impl"):
    TINY.replace(attention_impl="flash")


def test_cudnn_is_chosen_only_on_gpu_in_16_bits():
  from infini_jax.local_attention import uses_cudnn
  q = jnp.zeros((1, 8, 4, 64), jnp.bfloat16)
  assert uses_cudnn(q) == (jax.default_backend() == "gpu")
  assert not uses_cudnn(q.astype(jnp.float32))


@pytest.mark.parametrize("spec, w_shape", [("BTD,DNH->BTNH", (6, 4, 3)),
                                           ("BTNV,NVD->BTD", (4, 3, 6)),
                                           ("BTD,WD->BTW", (7, 6))])
def test_token_einsum_matches_einsum_with_gradients(spec, w_shape):
  x_shape = (2, 5) + {"BTD": (6,), "BTNV": (4, 3)}[spec.split(",")[0]]
  kx, kw = jax.random.split(jax.random.key(3))
  x, w = jax.random.normal(kx, x_shape), jax.random.normal(kw, w_shape)
  fast = jax.value_and_grad(lambda x, w: jnp.sum(jnp.sin(dense.token_einsum(spec, x, w))), (0, 1))
  plain = jax.value_and_grad(lambda x, w: jnp.sum(jnp.sin(jnp.einsum(spec, x, w))), (0, 1))
  assert dense.token_einsum(spec, x, w).shape == jnp.einsum(spec, x, w).shape
  (a, ga), (b, gb) = fast(x, w), plain(x, w)
  np.testing.assert_allclose(a, b, rtol=1e-5)
  for u, v in zip(ga, gb):
    np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("spec", ["TBD,DF->TBF", "BTD,BDF->BTF", "BD,DF->BF"])
def test_token_einsum_refuses_specs_without_leading_token_axes(spec):
  with pytest.raises(ValueError, match="lead with BT"):
    dense.token_einsum(spec, jnp.zeros((2, 3, 4)), jnp.zeros((4, 5)))
