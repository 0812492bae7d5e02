"""The compressive memory of Infini-attention, as pure functions on an explicit state.

Axis legend (used in every einsum below):
  B batch, T tokens of the segment, N query heads, K key/value heads, G query heads per key/value
  head (N = K * G), H key dim, V value dim.

Each key/value head keeps an associative matrix M [H, V] and a normaliser z [H]:
  retrieve  A_mem = σ(q) M / (σ(q) z)                           (paper eq. 3)
  linear    M += σ(k)ᵀ v                                         (paper eq. 4)
  delta     M += σ(k)ᵀ (v - σ(k) M / (σ(k) z))                   (paper eq. 5)
  both      z += Σ_t σ(k_t)
with σ = ELU + 1. Everything here runs in float32 whatever the caller's dtype: M and z grow with the
stream, and bfloat16 accumulators overflow on long inputs.

Beyond the paper, off by default: rule "deltanet" (the delta rule of Schlag et al., 2021, as in
DeltaNet) reads and writes with unit-length features φ(x) = x / |x| and no normaliser z:
  retrieve  A_mem = φ(q) M
  deltanet  M_t = M_{t-1} + φ(k_t)ᵀ (v_t - φ(k_t) M_{t-1}),    token by token
Each write replaces what M returned for the key with v_t, so M stays bounded, and the read of a
key that later writes do not overlap stays exact however long the stream (z, kept for the state's
shape, stays 0). The paper's delta rule writes a segment at once, which for unit keys overshoots
wherever a key repeats inside the segment; here the segment is written exactly as T sequential
writes, in parallel through one triangular solve (see `_deltanet_write`).

Also beyond the paper (model.memory_decay): a decay γ in (0, 1) per key/value head that fades
what earlier segments wrote before each write, M ← γ M, z ← γ z. With the linear rule the read
σ(q)M / σ(q)z then weighs segment s-j by γ^j: a recency-weighted summary whose sharpness does
not wash out as the stream grows, where the paper's memory averages over everything written.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

RULES = ("linear", "delta", "deltanet")


class CompressiveMemory(NamedTuple):
  """Per-layer memory state: M [B, K, H, V] and z [B, K, H], float32."""

  M: jax.Array
  z: jax.Array


def init_memory(batch: int, kv_heads: int, key_dim: int, value_dim: int) -> CompressiveMemory:
  """The empty memory M_0 = 0, z_0 = 0."""
  return CompressiveMemory(
      M=jnp.zeros((batch, kv_heads, key_dim, value_dim), jnp.float32),
      z=jnp.zeros((batch, kv_heads, key_dim), jnp.float32),
  )


def sigma(x: jax.Array) -> jax.Array:
  """ELU + 1: a positive feature map, so that σ(q)·z > 0 once anything was written."""
  return jax.nn.elu(x.astype(jnp.float32)) + 1.0


def unit(x: jax.Array) -> jax.Array:
  """φ(x) = x / |x| over the last axis, in float32 (the deltanet rule's features)."""
  x = x.astype(jnp.float32)
  return x * jax.lax.rsqrt(jnp.sum(x * x, axis=-1, keepdims=True) + 1e-12)


def _safe_divide(num: jax.Array, den: jax.Array) -> jax.Array:
  """num / den[..., None], exactly 0 where den == 0 (the empty memory reads as nothing).

  The double `where` keeps gradients finite too: the masked branch never divides by zero.
  """
  ok = den > 0
  return jnp.where(ok[..., None], num / jnp.where(ok, den, 1.0)[..., None], 0.0)


def _check_memory(memory: CompressiveMemory) -> tuple[int, int, int, int]:
  if memory.M.ndim != 4 or memory.z.ndim != 3 or memory.M.shape[:3] != memory.z.shape:
    raise ValueError(
        f"memory must hold M [B, K, H, V] and z [B, K, H]; got M {memory.M.shape}, z {memory.z.shape}")
  return memory.M.shape


def _read(memory: CompressiveMemory, sq: jax.Array) -> jax.Array:
  """σ(q) M / (σ(q) z) for features sq [B, T, K, G, H] -> [B, T, K, G, V]."""
  num = jnp.einsum("BTKGH,BKHV->BTKGV", sq, memory.M)  # [B, T, K, G, V]
  den = jnp.einsum("BTKGH,BKH->BTKG", sq, memory.z)  # [B, T, K, G]
  return _safe_divide(num, den)


def retrieve(memory: CompressiveMemory, q: jax.Array, rule: str = "linear") -> jax.Array:
  """Reads the memory for queries q [B, T, N, H]; returns [B, T, N, V] float32.

  Query head n reads key/value head n // G (grouped-query attention, G = N // K).
  """
  B, K, H, V = _check_memory(memory)
  if q.ndim != 4 or q.shape[0] != B or q.shape[3] != H:
    raise ValueError(f"q must be [B={B}, T, N, H={H}] to read this memory; got {q.shape}")
  N = q.shape[2]
  if N % K:
    raise ValueError(f"query heads N={N} must be a multiple of the memory's key/value heads K={K}")
  T = q.shape[1]
  if rule == "deltanet":
    fq = unit(q).reshape(B, T, K, N // K, H)  # [B, T, K, G, H]
    return jnp.einsum("BTKGH,BKHV->BTKGV", fq, memory.M).reshape(B, T, N, V)
  sq = sigma(q).reshape(B, T, K, N // K, H)  # [B, T, K, G, H]
  return _read(memory, sq).reshape(B, T, N, V)


def _deltanet_write(M: jax.Array, fk: jax.Array, v: jax.Array, write: jax.Array) -> jax.Array:
  """T sequential delta-rule writes M_t = M_{t-1} + write_t φ_tᵀ (v_t - φ_t M_{t-1}), at once.

  M [B, K, H, V], unit keys fk [B, T, K, H], v [B, T, K, V], write [B, T, K] in [0, 1] (0 on
  padding).
  With u_t = write_t (v_t - φ_t M_{t-1}) and M_{t-1} = M_0 + Σ_{s<t} φ_sᵀ u_s:
    u_t + write_t Σ_{s<t} (φ_t·φ_s) u_s = write_t (v_t - φ_t M_0),
  a unit lower-triangular system (I + diag(write) L) U = diag(write) (V - Φ M_0) per batch row and
  head, with L the strictly lower part of Φ Φᵀ; then M_T = M_0 + Φᵀ U.
  """
  T = fk.shape[1]
  w = jnp.einsum("BTK->BKT", write)[..., None]  # [B, K, T, 1]
  gram = jnp.einsum("BTKH,BSKH->BKTS", fk, fk)  # [B, K, T, T]
  L = jnp.tril(gram, -1) * w
  rhs = w * (jnp.einsum("BTKV->BKTV", v) - jnp.einsum("BTKH,BKHV->BKTV", fk, M))  # [B, K, T, V]
  U = jax.scipy.linalg.solve_triangular(L + jnp.eye(T, dtype=L.dtype), rhs, lower=True,
                                        unit_diagonal=True)  # [B, K, T, V]
  return M + jnp.einsum("BTKH,BKTV->BKHV", fk, U)


def update(
    memory: CompressiveMemory,
    k: jax.Array,
    v: jax.Array,
    rule: str,
    mask: jax.Array | None = None,
    strength: jax.Array | None = None,
    decay: jax.Array | None = None,
) -> CompressiveMemory:
  """Writes one segment's keys k [B, T, K, H] and values v [B, T, K, V] into the memory.

  mask [B, T] (bool, False on padding) removes padded tokens from both M and z. strength
  [B, T, K] in [0, 1] (model.write_gate) weighs each token's write: linear and delta add
  strength·σ(k) to z and strength·σ(k)ᵀ(...) to M, deltanet moves M that fraction of the way.
  decay [K] in (0, 1] (model.memory_decay) scales M and z before the write, in every row with
  at least one real token: a segment that is all padding leaves the memory as it was.
  """
  if rule not in RULES:
    raise ValueError(f"unknown memory update rule {rule!r}; use one of {RULES}")
  B, K, H, V = _check_memory(memory)
  if k.ndim != 4 or k.shape[0] != B or k.shape[2:] != (K, H):
    raise ValueError(f"k must be [B={B}, T, K={K}, H={H}] for this memory; got {k.shape}")
  if v.shape != k.shape[:3] + (V,):
    raise ValueError(f"v must be [B={B}, T={k.shape[1]}, K={K}, V={V}]; got {v.shape}")
  if mask is not None and mask.shape != k.shape[:2]:
    raise ValueError(f"mask must be [B, T] = {k.shape[:2]}; got {mask.shape}")
  if strength is not None and strength.shape != k.shape[:3]:
    raise ValueError(f"strength must be [B, T, K] = {k.shape[:3]}; got {strength.shape}")
  if decay is not None and decay.shape != (K,):
    raise ValueError(f"decay must be [K] = ({K},), one per key/value head; got {decay.shape}")
  # One weight per token and head: 0 on padding, else the write strength (1 without one).
  w = jnp.ones(k.shape[:3], jnp.float32)
  if mask is not None:
    w = w * mask[:, :, None].astype(jnp.float32)
  if strength is not None:
    w = w * strength.astype(jnp.float32)

  v = v.astype(jnp.float32)
  if decay is not None:
    real = jnp.ones((B, 1), bool) if mask is None else jnp.any(mask, axis=1)[:, None]  # [B, 1]
    gamma = jnp.where(real, decay.astype(jnp.float32)[None, :], 1.0)  # [B, K]
    memory = CompressiveMemory(memory.M * gamma[:, :, None, None], memory.z * gamma[:, :, None])
  if rule == "deltanet":
    return CompressiveMemory(_deltanet_write(memory.M, unit(k), v, w), memory.z)
  sk = sigma(k)  # [B, T, K, H]
  if rule == "delta":
    # Write only what the memory does not already return for this key (eq. 5).
    v = v - _read(memory, sk[:, :, :, None, :])[:, :, :, 0, :]  # [B, T, K, V]
  sk = sk * w[..., None]
  M = memory.M + jnp.einsum("BTKH,BTKV->BKHV", sk, v)  # [B, K, H, V]
  z = memory.z + jnp.einsum("BTKH->BKH", sk)  # [B, K, H]
  return CompressiveMemory(M, z)


def state_size(kv_heads: int, key_dim: int, value_dim: int) -> int:
  """Numbers held per layer and sequence: K·(H·V + H), independent of the stream's length."""
  return kv_heads * (key_dim * value_dim + key_dim)
