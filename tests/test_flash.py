"""The Pallas TPU kernel (attention_impl "pallas") against the blocked path, in interpret mode.

Forward and gradients, grouped heads, padding on the right and in the middle (RMT's mask). Rows
of padded queries are excluded: the paths give them different, finite, ignored outputs. Then
the kernel under a mesh: split by shard_map on 4 fake CPU devices (numerics), and compiled for
a real TPU slice (v5e:2x2) from this CPU machine (libtpu's compiler).
"""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from infini_jax import flash_tpu
from infini_jax import sharding as sh
from infini_jax.local_attention import IMPLEMENTATIONS, blocked_causal_attention

T = 384  # 3 blocks of 128: the causal skip of blocks above the diagonal and the online softmax


def _qkv(B=2, T=T, N=4, K=2, H=16, seed=0):
  kq, kk, kv = jax.random.split(jax.random.key(seed), 3)
  return (jax.random.normal(kq, (B, T, N, H)), jax.random.normal(kk, (B, T, K, H)),
          jax.random.normal(kv, (B, T, K, H)))


def _masks(T=T):
  pos = jnp.arange(T)
  right = pos < 250  # a partial last segment
  p = 40  # RMT: [True * p, a segment padded after 200 tokens, True * p]
  middle = (pos < p + 200) | (pos >= T - p)
  return {"right": jnp.stack([right, pos < T]), "middle": jnp.stack([middle, right])}


@pytest.mark.parametrize("kind", ["right", "middle"])
def test_pallas_equals_blocked_forward_and_gradients(kind):
  q, k, v = _qkv()
  mask = _masks()[kind]
  real = mask[:, :, None, None]  # the loss sees real queries only
  w = jax.random.normal(jax.random.key(9), q.shape)

  def run(impl):
    def loss(q, k, v):
      out = impl(q, k, v, mask)
      return jnp.sum(jnp.where(real, out * w, 0.0)), out
    return jax.jit(jax.value_and_grad(loss, (0, 1, 2), has_aux=True))(q, k, v)

  with flash_tpu.interpret():
    (l_p, out_p), g_p = run(IMPLEMENTATIONS["pallas"])
  (l_b, out_b), g_b = run(blocked_causal_attention)
  assert out_p.dtype == jnp.float32 and bool(jnp.isfinite(out_p).all())
  diffs = [float(jnp.abs(jnp.where(real, out_p - out_b, 0)).max())]
  diffs += [float(jnp.abs(a - b).max()) for a, b in zip(g_p, g_b)]
  print(f"{kind}: max |out|, |dq|, |dk|, |dv| differences", diffs)
  np.testing.assert_allclose(np.where(real, out_p, 0), np.where(real, out_b, 0), atol=2e-6)
  np.testing.assert_allclose(l_p, l_b, rtol=1e-5)
  for a, b in zip(g_p, g_b):
    np.testing.assert_allclose(a, b, atol=2e-5)


def test_without_mask_every_row_agrees():
  q, k, v = _qkv(B=1)
  with flash_tpu.interpret():
    out = jax.jit(lambda q, k, v: IMPLEMENTATIONS["pallas"](q, k, v, None))(q, k, v)
  np.testing.assert_allclose(out, blocked_causal_attention(q, k, v, None), atol=2e-6)


def test_outside_interpret_mode_a_cpu_is_refused():
  q, k, v = _qkv(B=1)
  if jax.default_backend() != "tpu":
    with pytest.raises(ValueError, match="TPU kernel"):
      IMPLEMENTATIONS["pallas"](q, k, v, None)


def test_segments_the_kernel_cannot_take_fall_back_to_xla():
  q, k, v = _qkv(T=40)
  mask = jnp.arange(40)[None, :] < jnp.array([[40], [23]])
  with flash_tpu.interpret(), pytest.warns(UserWarning, match="multiple of 128"):
    out = IMPLEMENTATIONS["pallas"](q, k, v, mask)
  real = mask[:, :, None, None]
  np.testing.assert_allclose(np.where(real, out, 0),
                             np.where(real, blocked_causal_attention(q, k, v, mask), 0), atol=2e-5)


def test_the_model_with_pallas_attention_gives_the_blocked_loss(make_model):
  """Two segments of 128 through the model (the last one partial, so padded), one layer."""
  tokens = jax.random.randint(jax.random.key(1), (1, 201), 0, 64)
  nll = {}
  for impl in ("blocked", "pallas"):
    model = make_model(attention_impl=impl, shape=dict(num_layers=1, segment_len=128))
    with flash_tpu.interpret():
      nll[impl] = jax.jit(lambda x: model.nll(x[:, :-1], x[:, 1:])[0])(tokens)
  if jax.default_backend() != "tpu":  # the kernel, not a fallback, ran above
    with pytest.raises(ValueError, match="TPU kernel"):
      model.nll(tokens[:, :-1], tokens[:, 1:])
  np.testing.assert_allclose(nll["pallas"], nll["blocked"], rtol=1e-5, atol=1e-5)


def test_block_sizes_divide_the_segment():
  assert [flash_tpu.block_size(t) for t in (2048, 384, 256, 128, 100)] == [512, 128, 256, 128, None]


# Under a mesh of 4 fake CPU devices (data 1, fsdp 2, tensor 2): the shard_map splits batch and
# heads; each device's kernel must pair its query heads with its own key/value heads.
_MESH_SCRIPT = textwrap.dedent("""
  import jax, jax.numpy as jnp, numpy as np
  from infini_jax import flash_tpu, sharding as sh
  from infini_jax.local_attention import IMPLEMENTATIONS, blocked_causal_attention
  ks = jax.random.split(jax.random.key(0), 3)
  q = jax.random.normal(ks[0], (2, 256, 4, 16))
  k, v = (jax.random.normal(s, (2, 256, 2, 16)) for s in ks[1:])
  mask = jnp.stack([jnp.arange(256) < 200, (jnp.arange(256) < 150) | (jnp.arange(256) >= 220)])
  mesh = sh.make_mesh({"data": 1, "fsdp": 2, "tensor": 2})
  rules = sh.check_rules(sh.DEFAULT_RULES)
  f = lambda q, k, v: IMPLEMENTATIONS["pallas"](q, k, v, mask)
  with jax.set_mesh(mesh), sh.use_rules(rules), flash_tpu.interpret():
    out = jax.jit(f)(q, k, v)
    text = jax.jit(f).lower(q, k, v).as_text()
  real = mask[:, :, None, None]
  ref = blocked_causal_attention(q, k, v, mask)
  manual = "shard_map" in text or "sdy.manual_computation" in text
  print(float(jnp.abs(jnp.where(real, out - ref, 0)).max()), manual)
""")


def test_under_a_mesh_the_kernel_is_split_by_heads_and_batch():
  flags = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
  env = dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu")
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  proc = subprocess.run([sys.executable, "-c", _MESH_SCRIPT], cwd=root, env=env,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  diff, manual = proc.stdout.split()[-2:]
  print("under the mesh: max |out| difference", diff)
  assert float(diff) < 2e-6 and manual == "True"


def test_compiles_for_a_tpu_slice_under_a_mesh():
  """Forward and backward, bf16, compiled for v5e:2x2 with fsdp 2 x tensor 2: three Mosaic kernels
  (forward, dq, dkv) on each chip's shard, with nothing gathered."""
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # other compiles may hold libtpu
  from jax.experimental import topologies

  topo = topologies.get_topology_desc(topology_name="v5e:2x2", platform="tpu")
  mesh = sh.make_mesh({"data": 1, "fsdp": 2, "tensor": 2}, topo.devices)
  rules = sh.check_rules(sh.DEFAULT_RULES)
  B, T, N, K, H = 4, 1024, 8, 4, 128
  names = {"q": (sh.BATCH, None, sh.HEADS, None), "kv": (sh.BATCH, None, sh.KV_HEADS, None),
           "mask": (sh.BATCH, None)}

  def abstract(shape, kind, dtype=jnp.bfloat16):
    return jax.ShapeDtypeStruct(shape, dtype, sharding=sh.named(mesh, names[kind], rules, shape))

  args = (abstract((B, T, N, H), "q"), abstract((B, T, K, H), "kv"), abstract((B, T, K, H), "kv"),
          abstract((B, T), "mask", jnp.bool_))

  def step(q, k, v, mask):
    return jax.value_and_grad(
        lambda q, k, v: jnp.sum(IMPLEMENTATIONS["pallas"](q, k, v, mask) ** 2), (0, 1, 2))(q, k, v)

  with jax.set_mesh(mesh), sh.use_rules(rules):
    compiled = jax.jit(step).lower(*args).compile()
  hlo, memory = compiled.as_text(), compiled.memory_analysis()
  # Each chip holds half the batch and half the heads of q, k, v (bf16) and half the mask (its
  # TPU layout pads a little); gathered heads or batch would double it.
  per_chip = (B // 2) * T * (N // 2 + 2 * K // 2) * H * 2 + (B // 2) * T
  print("per chip: arguments", memory.argument_size_in_bytes, "temporaries",
        memory.temp_size_in_bytes, "outputs", memory.output_size_in_bytes, "from shapes", per_chip)
  assert hlo.count("tpu_custom_call") == 3
  assert "all-gather" not in hlo and "all-to-all" not in hlo
  assert per_chip <= memory.argument_size_in_bytes < 1.01 * per_chip
