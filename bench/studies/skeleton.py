"""The demo training step's matmuls and nothing else: how far MFU can go at the model's shapes.

The step's MFU has two parts: how fast XLA:CPU runs the matmuls at the shapes the model gives
them, and how much time the rest takes (norms, softmax, masks, RoPE, the memory's ELU features,
AdamW). This skeleton keeps the first and drops the second. Per layer and segment it runs the
same products on the same shapes as infini_jax.model (projections on [B·T, D] rows, grouped-head
attention over the whole T x T square, the memory's read and write, SwiGLU's three matmuls), then
the unembedding, in the same segment scan under the same rematerialisation, trained with plain
SGD. What is left around the matmuls: the embedding gather, the residual adds, SwiGLU's
product, scalar scales, the head transposes XLA inserts. Its matmul FLOPs equal
ModelConfig.flops_per_token (tests/test_flops.py), so its MFU is what the real step would reach
if all but its matmuls cost nothing (up to the layouts XLA picks): a target above it needs other
matmul shapes or another matmul library, not less overhead around them.

Axis legend as in the model: B batch, T segment (queries), S segment (keys), D model dim, N query
heads, K key/value heads, G query heads per key/value head, H head dim (also the value dim),
F feed-forward dim, W vocabulary, X = B·T token rows.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from infini_jax.model import REMAT_POLICIES, ModelConfig


def init(cfg: ModelConfig, key: jax.Array) -> dict:
  s = cfg.shape
  D, N, K, H, F = s.d_model, s.num_heads, s.num_kv_heads, s.head_dim, s.mlp_dim
  keys = iter(jax.random.split(key, 7 * cfg.shape.num_layers + 2))

  def normal(*shape, fan_in):
    return jax.random.normal(next(keys), shape) * fan_in ** -0.5

  layers = [dict(wq=normal(D, N, H, fan_in=D), wk=normal(D, K, H, fan_in=D),
                 wv=normal(D, K, H, fan_in=D), wo=normal(N, H, D, fan_in=N * H),
                 w_gate=normal(D, F, fan_in=D), w_up=normal(D, F, fan_in=D),
                 w_down=normal(F, D, fan_in=F))
            for _ in range(cfg.shape.num_layers)]
  return dict(layers=layers, embed=normal(cfg.shape.vocab_size, D, fan_in=D),
              unembed=normal(D, cfg.shape.vocab_size, fan_in=D))


def _layer(cfg: ModelConfig, p: dict, x: jax.Array, M: jax.Array, z: jax.Array):
  """x [B, T, D], memory M [B, K, H, H], z [B, K, H] -> (x, M, z)."""
  B, T, D = x.shape
  K, H = cfg.shape.num_kv_heads, cfg.shape.head_dim
  G = cfg.shape.num_heads // K
  rows = x.reshape(B * T, D)
  q = jnp.einsum("XD,DNH->XNH", rows, p["wq"]).reshape(B, T, K, G, H)
  k = jnp.einsum("XD,DKH->XKH", rows, p["wk"]).reshape(B, T, K, H)
  v = jnp.einsum("XD,DKH->XKH", rows, p["wv"]).reshape(B, T, K, H)
  # Scalar scales keep a net without softmax or norms finite: scores as the average over the
  # segment's keys, the memory as a sum of per-segment averages.
  scores = jnp.einsum("BTKGH,BSKH->BKGTS", q, k) * (H ** -0.5 / T)
  local = jnp.einsum("BKGTS,BSKH->BTKGH", scores, v)
  read = jnp.einsum("BTKGH,BKHV->BTKGV", q, M)
  norm = jnp.einsum("BTKGH,BKH->BTKG", q, z)
  M = M + jnp.einsum("BTKH,BTKV->BKHV", k, v) / T
  z = z + jnp.mean(k, axis=1)
  out = (local + read + norm[..., None]).reshape(B * T, K * G, H)
  rows = rows + jnp.einsum("XNH,NHD->XD", out, p["wo"])
  hidden = (rows @ p["w_gate"]) * (rows @ p["w_up"])
  rows = rows + hidden @ p["w_down"]
  return rows.reshape(B, T, D), M, z


def loss_fn(cfg: ModelConfig, params: dict, tokens: jax.Array) -> jax.Array:
  """tokens [B, L], L a multiple of the segment -> a scalar, through the segment scan."""
  if cfg.memory != "infini" or cfg.infini.rule != "linear":
    raise ValueError("the skeleton has the matmuls of the infini memory's linear rule only; got "
                     f"memory={cfg.memory!r}, rule={cfg.infini.rule!r}")
  B, L = tokens.shape
  T, K, H = cfg.shape.segment_len, cfg.shape.num_kv_heads, cfg.shape.head_dim
  x = jnp.take(params["embed"], tokens, axis=0)  # [B, L, D]
  segments = jnp.moveaxis(x.reshape(B, L // T, T, -1), 1, 0)  # [S, B, T, D]

  def step(params, memories, x):
    new = []
    for p, (M, z) in zip(params["layers"], memories):
      x, M, z = _layer(cfg, p, x, M, z)
      new.append((M, z))
    logits = jnp.einsum("XD,DW->XW", x.reshape(B * T, -1), params["unembed"])
    return new, jnp.mean(logits * logits)

  policy = REMAT_POLICIES[cfg.remat]
  if cfg.remat != "none":
    step = jax.checkpoint(step, policy=policy, prevent_cse=False)
  empty = [(jnp.zeros((B, K, H, H)), jnp.zeros((B, K, H))) for _ in range(cfg.shape.num_layers)]
  _, losses = jax.lax.scan(lambda m, x: step(params, m, x), empty, segments)
  return jnp.mean(losses)


def train_step(cfg: ModelConfig):
  """A jitted (params, tokens) -> (params, loss): forward, backward and an SGD update."""

  @jax.jit
  def step(params, tokens):
    loss, grads = jax.value_and_grad(lambda p: loss_fn(cfg, p, tokens))(params)
    return jax.tree.map(lambda p, g: p - 1e-3 * g, params, grads), loss

  return step
