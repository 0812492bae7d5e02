"""Causal softmax attention inside one segment, in query blocks that skip the masked upper triangle.

Axis legend as in attention.py: B batch, T queries, S keys, K key/value heads, G query heads per
key/value head, H key dim, V value dim.

Why blocks: on a CPU the [K, T, S] float32 logits and probabilities do not fit in cache, and every
elementwise pass over them (mask, exp, normalise, and their gradients) costs as much as a matmul.
Query block [lo, hi) can only see keys [0, hi), so it computes logits for that prefix only: about
half the exp and matmul work of the full T x T square, and intermediates a few MiB in size. Each
block sees its whole key prefix at once, so its softmax is exact (no online rescaling).

Why a custom VJP: autodiff of the blocked forward computes the softmax gradient's row term with a
reduction over each [bq, S] block; the rule below uses Δ = rowsum(dO ∘ O), one pass over [T, V]
(measured 1.1-1.2x on the layer's forward+backward). It keeps the forward's probabilities: a
variant that recomputed them keys-major to avoid XLA's transposes of [K, bq, S] was slower.
"""

from __future__ import annotations

import functools
import warnings

import jax
import jax.numpy as jnp

from infini_jax.flash_tpu import pallas_causal_attention

# A finite floor instead of -inf: a fully padded row gives a finite (ignored) output, not NaN.
# Added to a logit it stays finite (the logit is far below its rounding step) and exp() gives 0.
_NEG = float(jnp.finfo(jnp.float32).min)
BLOCK = 256  # queries per block: measured 128-256 best on CPU for segments of 1024


def _bias(key_ok: jax.Array | None, lo: int, hi: int) -> jax.Array:
  """Additive mask [B or 1, 1, 1, hi - lo, hi] for queries [lo, hi) over keys [0, hi)."""
  row = jax.lax.broadcasted_iota(jnp.int32, (hi - lo, hi), 0) + lo
  col = jax.lax.broadcasted_iota(jnp.int32, (hi - lo, hi), 1)
  visible = (col <= row)[None]  # [1, T, S]
  if key_ok is not None:
    visible = visible & key_ok[:, None, :hi]  # [B, T, S]
  return jnp.where(visible, 0.0, _NEG)[:, None, None]


def _spans(T: int, block: int) -> list[tuple[int, int]]:
  return [(lo, min(lo + block, T)) for lo in range(0, T, block)]


def _forward(q, k, v, key_ok, block):
  """Outputs [B, K, G, T, V] and the probabilities of each block [B, K, G, bq, hi]."""
  outs, probs = [], []
  for lo, hi in _spans(q.shape[3], block):
    logits = jnp.einsum("BKGTH,BKSH->BKGTS", q[:, :, :, lo:hi], k[:, :, :hi])
    p = jax.nn.softmax(logits + _bias(key_ok, lo, hi), axis=-1)  # [B, K, G, bq, hi]
    probs.append(p)
    outs.append(jnp.einsum("BKGTS,BKSV->BKGTV", p, v[:, :, :hi]))
  return jnp.concatenate(outs, axis=3), probs


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _attend(q, k, v, key_ok, block):
  return _forward(q, k, v, key_ok, block)[0]


def _attend_fwd(q, k, v, key_ok, block):
  out, probs = _forward(q, k, v, key_ok, block)
  return out, (q, k, v, key_ok, out, probs)


def _attend_bwd(block, res, d_out):
  q, k, v, key_ok, out, probs = res
  # Softmax backward: dL = P ∘ (dP - Δ) with Δ = rowsum(P ∘ dP) = rowsum(dO ∘ O).
  delta = jnp.einsum("BKGTV,BKGTV->BKGT", d_out, out)[..., None]  # [B, K, G, T, 1]
  dq, dk, dv = [], jnp.zeros_like(k), jnp.zeros_like(v)
  for (lo, hi), p in zip(_spans(q.shape[3], block), probs):
    do = d_out[:, :, :, lo:hi]  # [B, K, G, bq, V]
    dp = jnp.einsum("BKGTV,BKSV->BKGTS", do, v[:, :, :hi])
    dl = p * (dp - delta[:, :, :, lo:hi])  # [B, K, G, bq, hi]
    dq.append(jnp.einsum("BKGTS,BKSH->BKGTH", dl, k[:, :, :hi]))
    dk = dk.at[:, :, :hi].add(jnp.einsum("BKGTS,BKGTH->BKSH", dl, q[:, :, :, lo:hi]))
    dv = dv.at[:, :, :hi].add(jnp.einsum("BKGTS,BKGTV->BKSV", p, do))
  d_key_ok = None if key_ok is None else jnp.zeros(key_ok.shape, jax.dtypes.float0)
  return jnp.concatenate(dq, axis=3), dk, dv, d_key_ok


_attend.defvjp(_attend_fwd, _attend_bwd)


def blocked_causal_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None,
                             block: int = BLOCK) -> jax.Array:
  """q [B, T, N, H], k [B, S, K, H], v [B, S, K, V], mask [B, S] -> [B, T, N, V] float32."""
  B, T, N, H = q.shape
  K, V = k.shape[2], v.shape[3]
  # Heads first, so that every block's matmuls are plain batched [T, H] x [H, S] products.
  qh = jnp.einsum("BTKGH->BKGTH", q.reshape(B, T, K, N // K, H).astype(jnp.float32)) * H ** -0.5
  kh = jnp.einsum("BSKH->BKSH", k.astype(jnp.float32))
  vh = jnp.einsum("BSKV->BKSV", v.astype(jnp.float32))
  out = _attend(qh, kh, vh, mask, block)  # [B, K, G, T, V]
  return jnp.einsum("BKGTV->BTKGV", out).reshape(B, T, N, V)


# --- The fast path: jax.nn.dot_product_attention (model.attention_impl = "xla"). ---
# jax 0.10's `implementation=None` always takes XLA's path (its automatic choice is a TODO), so
# the choice is made here: cuDNN's flash attention where it applies (a GPU, 16-bit q/k/v, head
# dim a multiple of 8 up to 128), XLA's path elsewhere (CPU, TPU, float32). Both take grouped
# query heads as they are (N a multiple of K, layout BTNH); neither needs the float32 upcast of
# the blocked path: logits and softmax run in float32 inside them.
CUDNN_DTYPES = (jnp.bfloat16, jnp.float16)


def uses_cudnn(q: jax.Array) -> bool:
  """Whether `xla_causal_attention` runs cuDNN flash attention for queries like q [B, T, N, H]."""
  H = q.shape[-1]
  return (jax.default_backend() == "gpu" and q.dtype in CUDNN_DTYPES and H % 8 == 0
          and H <= 128)


def cudnn_causal_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None,
                           implementation: str = "cudnn") -> jax.Array:
  """Causal attention whose padding is given as key lengths, for a mask padded anywhere.

  cuDNN takes padding only as per-row key lengths (a mask must be a full [B, N, T, S] bias, which
  at 32K tokens is GiBs), and a length means right padding. Masks may pad the middle (RMT's is
  [True * p, segment mask, True * p]). So the real tokens are first moved, in order, to the front
  (a stable permutation of q, k, v along T): a real query then sees exactly the real keys that
  preceded it, through the causal mask alone, and the padding is on the right, where the length
  cuts it off. RoPE is already applied, so the logits do not depend on the move. The outputs are
  moved back. Where every row is already right padding (the segment scan's partial last segment,
  the data windows, the evaluators) the moves are skipped: they are 4 gathers and, backward, 4
  scatters over [B, T, heads, H]. `implementation` is "cudnn" on a GPU; "xla" runs the same
  arguments on any backend (tests).
  q [B, T, N, H], k [B, T, K, H], v [B, T, K, V], mask [B, T] -> [B, T, N, V] in q's dtype.
  """
  attend = lambda q, k, v, lengths: jax.nn.dot_product_attention(
      q, k, v, is_causal=True, key_value_seq_lengths=lengths, implementation=implementation)
  if mask is None:
    return attend(q, k, v, None)
  count = mask.sum(-1)  # [B]
  lengths = jnp.maximum(count, 1).astype(jnp.int32)  # at least 1: no query without a key

  def moved(q, k, v):
    order = jnp.argsort(~mask, axis=-1, stable=True)  # [B, T]: real positions first, in order
    gather = lambda x, idx: jnp.take_along_axis(x, idx[:, :, None, None], axis=1)
    out = attend(gather(q, order), gather(k, order), gather(v, order), lengths)
    return gather(out, jnp.argsort(order, axis=-1))  # back to the original positions

  right_padded = jnp.all(mask == (jnp.arange(mask.shape[1]) < count[:, None]))
  return jax.lax.cond(right_padded, lambda q, k, v: attend(q, k, v, lengths), moved, q, k, v)


def xla_causal_attention(q: jax.Array, k: jax.Array, v: jax.Array,
                         mask: jax.Array | None) -> jax.Array:
  """`blocked_causal_attention` through jax.nn.dot_product_attention: same shapes and outputs.

  q [B, T, N, H], k [B, S, K, H], v [B, S, K, V] (V = H), mask [B, S] -> [B, T, N, V] float32.
  On a GPU in 16 bits, cuDNN (`cudnn_causal_attention`: the padding wherever it lies, moved to
  the right); elsewhere XLA's path with the mask as it is. Rows of padded queries differ
  between paths; every caller ignores them.
  """
  k, v = k.astype(q.dtype), v.astype(q.dtype)
  out = None
  if uses_cudnn(q):
    try:  # cuDNN's own checks run here, at trace time: its version, the GPU, the shapes
      out = cudnn_causal_attention(q, k, v, mask)
    except (NotImplementedError, RuntimeError, ValueError) as e:
      warnings.warn(f"cuDNN flash attention is not available here ({e}); using XLA's attention")
  if out is None:
    key_mask = None if mask is None else mask.astype(bool)[:, None, None, :]  # [B, 1, 1, S]
    out = jax.nn.dot_product_attention(q, k, v, mask=key_mask, is_causal=True)
  return out.astype(jnp.float32)


# "pallas": splash attention, a Pallas TPU kernel (flash_tpu.py).
IMPLEMENTATIONS = {"blocked": blocked_causal_attention, "xla": xla_causal_attention,
                   "pallas": pallas_causal_attention}
