"""The segment's causal attention as a Pallas TPU kernel: splash attention (impl "pallas").

Axis legend as in attention.py: B batch, T queries, S keys, N query heads, K key/value heads,
H key dim, V value dim.

Why splash attention (jax.experimental.pallas.ops.tpu.splash_attention) and not the older
flash_attention beside it: splash takes grouped-query heads as they are (q [N, T, H] against
k, v [K, S, H]; query head n reads key/value head n // (N // K)), so k and v are never repeated
N // K times in HBM, and its causal mask is static, so blocks above the diagonal are neither
loaded nor computed. It has no batch axis: it is vmapped over B.

Padding is segment ids: a position's id is 1 where the mask is False, 0 where it is True, for
queries and keys alike, so a real query sees exactly the real keys before it, wherever the
padding lies (RMT's mask pads the middle: [True * p, segment mask, True * p]). A padded query sees
the padded keys before it, and always itself: no row is empty, so no softmax divides by zero.
Callers ignore those rows; the blocked path gives them other (also finite) values.

On a CPU the kernel runs only in Pallas interpret mode: `with flash_tpu.interpret():` (tests).
jax 0.10.2's TPU interpreter (`pltpu.force_tpu_interpret_mode`) fails on a vmapped kernel
(its grid gains the batch axis, its dimension semantics do not), so this uses the kernel's own
`interpret=True`, the generic Pallas interpreter: the same kernel body, run as XLA on the CPU.
"""

from __future__ import annotations

import contextlib
import math
import warnings

import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as splash_mask
from jax.sharding import PartitionSpec as P

from infini_jax import sharding

# Block sizes tried from the largest, for queries and keys, forward and backward alike; the
# segment length must be a multiple of the block. 512 is MaxText's default for splash attention
# (its tuned v5p/v6e recipes go to 2048 with the fused backward kernel). Not yet timed on a TPU.
BLOCKS = (512, 256, 128)
LANES = 128  # the kernel's key blocks are whole multiples of the TPU's 128 lanes

_interpret = False


@contextlib.contextmanager
def interpret():
  """Within this context the kernel runs in Pallas interpret mode (any backend, slow: tests)."""
  global _interpret
  previous, _interpret = _interpret, True
  try:
    yield
  finally:
    _interpret = previous


def target_platform() -> str:
  """The platform being compiled for: the active mesh's devices, else the default backend.

  A TPU slice compiled from a CPU machine (jax.experimental.topologies) has a TPU mesh while the
  default backend is the CPU.
  """
  device = getattr(jax.sharding.get_abstract_mesh(), "abstract_device", None)
  return device.platform if device is not None else jax.default_backend()


def block_size(T: int) -> int | None:
  """The largest of BLOCKS that divides a segment of T tokens; None if none does."""
  return next((b for b in BLOCKS if b <= T and T % b == 0), None)


def _kernel(num_heads: int, T: int, block: int, interpret: bool) -> splash.SplashAttentionKernel:
  """Causal splash attention over one example: q [N, T, H], k, v [K, T, H] -> [N, T, V].

  Built at each trace, not cached: it holds its block tables as arrays, which are tracers when
  made under jit (the numpy work behind them is cached by the library).
  """
  sizes = splash.BlockSizes(
      block_q=block, block_kv=block, block_kv_compute=block,
      block_q_dkv=block, block_kv_dkv=block, block_kv_dkv_compute=block,
      block_q_dq=block, block_kv_dq=block)
  mask = splash_mask.MultiHeadMask([splash_mask.CausalMask((T, T))] * num_heads)
  return splash.make_splash_mha(mask, block_sizes=sizes, head_shards=1, q_seq_shards=1,
                                interpret=interpret)


def _attend(q, k, v, mask):
  """The kernel on local (per-device) arrays: q [B, T, N, H], k, v [B, T, K, H], mask [B, T]."""
  B, T, N, H = q.shape
  # The kernel has no softmax scale: scale q in float32, before the cast to the compute dtype.
  qh = jnp.einsum("BTNH->BNTH", (q.astype(jnp.float32) * H ** -0.5).astype(q.dtype))
  kh, vh = (jnp.einsum("BSKH->BKSH", x.astype(q.dtype)) for x in (k, v))
  kernel = _kernel(N, T, block_size(T), _interpret)
  if mask is None:
    out = jax.vmap(kernel)(qh, kh, vh)
  else:
    ids = jnp.where(mask, 0, 1).astype(jnp.int32)  # [B, T]: queries and keys alike
    out = jax.vmap(kernel)(qh, kh, vh, splash.SegmentIds(q=ids, kv=ids))
  return jnp.einsum("BNTV->BTNV", out).astype(jnp.float32)


def _mesh_axes(entry, mesh, size: int) -> tuple[str, ...] | None:
  """A rule's mesh axes, those of the active mesh, or None where they do not divide `size`."""
  names = entry if isinstance(entry, tuple) else (entry,)
  axes = tuple(a for a in names if a in mesh.axis_names)
  return axes if axes and size % math.prod(mesh.shape[a] for a in axes) == 0 else None


def _sharded(q, k, v, mask, mesh):
  """`_attend` inside a shard_map: Mosaic kernels are not partitioned by the compiler.

  The batch is split as the rules split BATCH, the heads as they split HEADS and KV_HEADS. Heads
  are split only where both map to the same mesh axes: contiguous chunks of query heads then
  meet the chunk of key/value heads they read. A dimension the axes do not divide (a batch of 1
  in evaluation) stays whole: correct, with the resharding that costs.
  """
  rules = sharding.active_rules() or sharding.check_rules(sharding.DEFAULT_RULES)
  B, N, K = q.shape[0], q.shape[2], k.shape[2]
  batch = _mesh_axes(rules.get(sharding.BATCH), mesh, B)
  heads = _mesh_axes(rules.get(sharding.HEADS), mesh, N)
  if heads != _mesh_axes(rules.get(sharding.KV_HEADS), mesh, K):
    heads = None
  spec = P(batch, None, heads, None)  # q, k, v and the output alike
  if mask is None:
    body = lambda q, k, v: _attend(q, k, v, None)
    return jax.shard_map(body, mesh=mesh, in_specs=(spec,) * 3, out_specs=spec,
                         check_vma=False)(q, k, v)
  return jax.shard_map(_attend, mesh=mesh, in_specs=(spec,) * 3 + (P(batch, None),),
                       out_specs=spec, check_vma=False)(q, k, v, mask)


def pallas_causal_attention(q: jax.Array, k: jax.Array, v: jax.Array,
                            mask: jax.Array | None) -> jax.Array:
  """`blocked_causal_attention` as a Pallas TPU kernel: same shapes, same outputs on real rows.

  q [B, T, N, H], k [B, T, K, H], v [B, T, K, V] (V = H), mask [B, T] -> [B, T, N, V] float32.
  k and v are cast to q's dtype (the compute dtype: bf16 on TPU); the kernel's logits and
  softmax run in float32. Shapes it cannot take (T not a multiple of 128, T != S) fall back to
  XLA's attention with a warning.
  """
  from infini_jax.local_attention import xla_causal_attention  # local: that file registers this

  if not _interpret and target_platform() != "tpu":
    raise ValueError(f"attention_impl='pallas' is a TPU kernel and this compiles for "
                     f"{target_platform()}; use 'blocked' (CPU) or 'xla' (GPU) here")
  T, S = q.shape[1], k.shape[1]
  if T != S or block_size(T) is None or v.shape[-1] != q.shape[-1]:
    warnings.warn(f"the pallas kernel takes segments of a multiple of {LANES} tokens with equal "
                  f"key and value dims (here T={T}, S={S}); using XLA's attention")
    return xla_causal_attention(q, k, v, mask)
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return _attend(q, k, v, mask)
  return _sharded(q, k, v, mask, mesh)
