"""The FLOP formulas behind every MFU figure, held to the matmuls the code runs (infini_jax/flops.py)."""


import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from configs import models
from infini_jax import flops as flopslib
from infini_jax import memories
from infini_jax.attention import Attention
from infini_jax.model import InfiniTransformer


def test_matmul_flops_counts_dots_and_multiplies_a_scan_by_its_length():
  w = jnp.ones((3, 5))
  x = jnp.ones((7, 3))
  assert flopslib.matmul_flops(lambda x: jnp.tanh(x @ w), x) == 2 * 7 * 3 * 5

  def scanned(x):
    step = jax.checkpoint(lambda c, a: (c, jnp.einsum("TD,DF->TF", a, w)))
    return jax.lax.scan(step, 0.0, jnp.stack([x] * 4))[1]

  assert flopslib.matmul_flops(scanned, x) == 4 * 2 * 7 * 3 * 5
  # Its gradient: the forward, then two products per matmul (input and weight gradients).
  grad = jax.grad(lambda w, x: jnp.sum(jnp.einsum("TD,DF->TF", x, w)))
  assert flopslib.matmul_flops(grad, w, x) == 2 * 7 * 3 * 5 * 2


# Grouped heads (tiny: 4 query heads over 2 key/value heads), every memory and each option that
# adds a matmul. Segments of 64 fit in one attention query block, so the whole square is computed.
CASES = {
    "infini": {},
    "infini delta": dict(infini=dict(rule="delta")),
    "infini deltanet": dict(infini=dict(rule="deltanet")),
    "infini gates": dict(infini=dict(write_gate=True, query_gate=True, memory_scale=True,
                                     decay=True)),
    "infini xl_cache": dict(infini=dict(xl_cache=True)),
    "local": dict(memory="local"),
    "xl": dict(memory="xl"),
    "memorizing": dict(memory="memorizing", memorizing=dict(memory_size=64, topk=8)),
    "compressive": dict(memory="compressive", compressive=dict(memory_size=8)),
    "rmt": dict(memory="rmt", rmt=dict(memory_tokens=4)),
}


@pytest.mark.parametrize("case", CASES)
def test_model_flops_per_token_is_what_the_model_runs(case):
  cfg = models.PRESETS["tiny"].replace(**CASES[case])
  model = InfiniTransformer(cfg, rngs=nnx.Rngs(0))
  tokens = jax.ShapeDtypeStruct((2, 3 * cfg.shape.segment_len), jnp.int32)
  counted = flopslib.matmul_flops(lambda t: model.nll(t, t)[0], tokens)
  assert counted == cfg.flops_per_token() * 2 * 3 * cfg.shape.segment_len


def test_layer_flops_per_token_is_what_the_layer_runs():
  # bench/layer.py's shape (d_model 512, 8 heads of 64) and its formula.
  segment, D, N, H = 128, 512, 8, 64  # one query block: the blocked attention computes the square
  layer = Attention(D, N, N, H, memories.paper(N, N, H), rngs=nnx.Rngs(0))
  x = jax.ShapeDtypeStruct((1, segment, D), jnp.float32)
  counted = flopslib.matmul_flops(lambda x: layer(x, layer.init_state(1))[0], x)
  assert counted == flopslib.layer_flops_per_token(D, N, H, segment, memory=True) * segment


def test_training_is_three_forwards_and_full_remat_adds_the_layers_once():
  # MFU's convention (training = 3 x forward, recomputation not counted), held to the code: each
  # matmul's backward is two of its size (the memory read's normalisation adds a sliver).
  tiny = models.PRESETS["tiny"]
  plain = flopslib.step_flops(tiny.replace(remat="none"), 2, 2 * tiny.shape.segment_len)
  assert plain["forward"] == plain["formula"]
  assert 3 * plain["forward"] <= plain["train"] < 3.01 * plain["forward"]
  full = flopslib.step_flops(tiny.replace(remat="full"), 2, 2 * tiny.shape.segment_len)
  # Remat is per layer: at most each layer's forward runs again (what its backward needs), the
  # readout (unembedding) does not.
  s = tiny.shape
  layers = full["forward"] - 2 * s.d_model * s.vocab_size * 2 * 2 * s.segment_len
  assert plain["train"] < full["train"] < 3.01 * full["forward"] + layers
