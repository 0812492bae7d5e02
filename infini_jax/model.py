"""The decoder LM: pre-norm blocks over segments, one explicit memory state per layer.

Axis legend: B batch, L input length, S number of segments, T segment length, D model dim,
F feed-forward dim, W vocabulary size.

Data flow: tokens [B, L] -> padded to S·T and cut into segments -> `jax.lax.scan` over segments
(segment-major: each step runs the whole stack on one segment, so the state of every layer is the
scan's carry) -> one output per segment. Inside a segment the layers are a scan over parameters
stacked on a leading layer axis (runs of identical layers: `Stage`), each layer rematerialised
with the configured policy, so that back-propagation holds one layer's working set plus the
layers' inputs, and compiling does not grow with depth. The readout (logits, or the loss, in
chunks of tokens) is computed inside the segment scan, so no [B, L, W] logits exist.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from infini_jax import dense
from infini_jax import memories
from infini_jax import rope as ropelib
from infini_jax import sharding as sh
from infini_jax.attention import Attention, param
from infini_jax.memories.common import Gate, keep_if_empty
from infini_jax.model_config import (  # noqa: F401 (ModelConfig's users import it from here)
    ATTENTION_IMPLS, DTYPES, REMAT_POLICIES, ModelConfig, Shape, stages)
from infini_jax.memories.options import Decay
from infini_jax.memories.rmt import RMT, TokenShift

ACTIVATION = (sh.BATCH, sh.LENGTH, None)  # block boundaries: split over the batch only
LOSS_CHUNK = 512  # tokens per chunk of the loss: no [T, W] float32 logits for a whole segment


def constrain_state(state):
  """Memory states live with their batch rows; the compressive memory [B, K, H, V] also with its
  key/value heads."""
  CM = memories.infini.CompressiveMemory

  def one(x):
    if isinstance(x, CM):
      return CM(*(sh.constrain(a, (sh.BATCH, sh.KV_HEADS) + (None,) * (a.ndim - 2)) for a in x))
    return sh.constrain(x, (sh.BATCH,) + (None,) * (x.ndim - 1))

  return jax.tree.map(one, state, is_leaf=lambda x: isinstance(x, CM))


class RMSNorm(nnx.Module):

  def __init__(self, dim: int, eps: float, param_dtype):
    self.eps = eps
    self.scale = nnx.Param(jnp.ones((dim,), param_dtype), sharding=(sh.EMBED,),
                           eager_sharding=False)

  def __call__(self, x: jax.Array) -> jax.Array:
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return (y * self.scale[...].astype(jnp.float32)).astype(x.dtype)


class MLP(nnx.Module):
  """SwiGLU feed-forward: down(silu(x W_gate) * x W_up)."""

  def __init__(self, d_model: int, mlp_dim: int, dtype, param_dtype, rngs: nnx.Rngs):
    self.dtype = dtype
    self.w_gate = param(rngs, (d_model, mlp_dim), (sh.EMBED, sh.MLP), 0, 1, param_dtype)
    self.w_up = param(rngs, (d_model, mlp_dim), (sh.EMBED, sh.MLP), 0, 1, param_dtype)
    self.w_down = param(rngs, (mlp_dim, d_model), (sh.MLP, sh.EMBED), 0, 1, param_dtype)

  def __call__(self, x: jax.Array) -> jax.Array:
    gate = dense.token_einsum("BTD,DF->BTF", x, dense.weight(self.w_gate, self.dtype))
    up = dense.token_einsum("BTD,DF->BTF", x, dense.weight(self.w_up, self.dtype))
    hidden = jax.nn.silu(gate) * up
    return dense.token_einsum("BTF,FD->BTD", hidden, dense.weight(self.w_down, self.dtype))


class Block(nnx.Module):

  def __init__(self, cfg: ModelConfig, index: int, rngs: nnx.Rngs):
    dtype, param_dtype, s = DTYPES[cfg.dtype], DTYPES[cfg.param_dtype], cfg.shape
    self.attn_norm = RMSNorm(s.d_model, s.norm_eps, param_dtype)
    self.attn = Attention(
        s.d_model, s.num_heads, s.num_kv_heads, s.head_dim, memories.build(cfg, index),
        rope_theta=cfg.rope.theta, rope_scaling=ropelib.scaling_of(cfg.rope), dtype=dtype,
        param_dtype=param_dtype, attention_impl=cfg.attention_impl, rngs=rngs)
    self.mlp_norm = RMSNorm(s.d_model, s.norm_eps, param_dtype)
    self.mlp = MLP(s.d_model, s.mlp_dim, dtype, param_dtype, rngs)

  def __call__(self, x, state, mask):
    y, state = self.attn(self.attn_norm(x), state, mask)
    x = x + y
    return x + self.mlp(self.mlp_norm(x)), state

  def extend(self, x, state, cache, pos):
    """Decoding: `__call__` for the next tokens of the current segment (see Attention)."""
    y, cache = self.attn.extend(self.attn_norm(x), state, cache, pos)
    x = x + y
    return x + self.mlp(self.mlp_norm(x)), cache


class Stage(nnx.Module):
  """`count` identical blocks, their parameters stacked on a leading `layers` axis, run by a
  scan: one layer's program, compiled once, each layer rematerialised with `remat`."""

  def __init__(self, cfg: ModelConfig, first: int, count: int, rngs: nnx.Rngs):
    @nnx.split_rngs(splits=count)
    @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: sh.LAYERS})
    def make(rngs):
      return Block(cfg, first, rngs)

    self.count, self.remat = count, cfg.remat
    self.blocks = make(rngs)

  def _memory(self):
    return self.blocks.attn.memory  # its state, cache and footprint do not depend on parameters

  def init_state(self, batch: int):
    one = self._memory().init_state(batch)
    return jax.tree.map(lambda a: jnp.broadcast_to(a, (self.count,) + a.shape), one)

  def init_cache(self, batch: int, T: int):
    one = self.blocks.attn.init_cache(batch, T)
    return jax.tree.map(lambda a: jnp.broadcast_to(a, (self.count,) + a.shape), one)

  def __call__(self, x, state, mask):
    """x [B, T, D], state stacked [count, ...] -> (x, state)."""
    graphdef, params = nnx.split(self.blocks)

    def layer(x, params_state):
      params, state = params_state
      block = nnx.merge(graphdef, params)
      y, new = block(sh.constrain(x, ACTIVATION), state, mask)
      return y, constrain_state(keep_if_empty(mask, new, state))

    if self.remat != "none":
      layer = jax.checkpoint(layer, policy=REMAT_POLICIES[self.remat], prevent_cse=False)
    return jax.lax.scan(layer, x, (params, state))

  def extend(self, x, state, cache, pos):
    graphdef, params = nnx.split(self.blocks)

    def layer(x, xs):
      params, state, cache = xs
      return nnx.merge(graphdef, params).extend(x, state, cache, pos)

    return jax.lax.scan(layer, x, (params, state, cache))

  def flush(self, state, cache):
    graphdef, params = nnx.split(self.blocks)
    flush = lambda p, s, c: nnx.merge(graphdef, p).attn.flush(s, c)  # noqa: E731
    return jax.vmap(flush)(params, state, cache)


class State(NamedTuple):
  """What the segment scan carries: each stage's stacked layer states, each part's state."""

  layers: tuple
  parts: tuple = ()


class InfiniTransformer(nnx.Module):
  """Decoder-only LM whose attention layers carry a segment memory across segments.

  `model(tokens, state, mask)` returns (logits, state); `model.nll(tokens, targets, state, mask)`
  returns (per-token negative log-likelihood, state) without materialising all the logits. Both run
  the same segment scan. `state=None` starts from empty memories (`init_state`). Calling on a long
  input at once or chunk by chunk (chunks a multiple of segment_len), passing the state along,
  gives the same result.
  """

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.dtype = DTYPES[cfg.dtype]
    param_dtype, s = DTYPES[cfg.param_dtype], cfg.shape
    # Embedding rows have unit scale: the input of the first norm, not of a matmul. Tied, they
    # are also the unembedding, whose logits would then start at std sqrt(D) (a loss of ~45 for
    # the 1b preset): scaled by D^-1/2, the first loss is near log(vocab) either way.
    scale = s.d_model ** -0.5 if s.tie_embeddings else 1.0
    self.embed = nnx.Param(
        scale * jax.random.normal(rngs.params(), (s.vocab_size, s.d_model), param_dtype),
        sharding=(sh.VOCAB, sh.EMBED), eager_sharding=False)
    self.stages = nnx.List([Stage(cfg, first, count, rngs) for first, count in stages(cfg)])
    # Model-level parts, each wrapping the stack (infini_jax/memories/rmt.py), in the order they
    # enter: the token shift changes the inputs, RMT then puts memory tokens around them.
    shift = cfg.token_shift
    parts = [TokenShift(shift.size, s.d_model, shift.init, param_dtype)] if shift.size else []
    if cfg.memory == "rmt":
      parts.append(RMT(cfg.rmt.memory_tokens, s.d_model, self.dtype, param_dtype, rngs))
    self.parts = nnx.List(parts)
    self.final_norm = RMSNorm(s.d_model, s.norm_eps, param_dtype)
    if not s.tie_embeddings:
      self.unembed = param(rngs, (s.d_model, s.vocab_size), (sh.EMBED, sh.VOCAB), 0, 1,
                           param_dtype)

  def init_state(self, batch: int) -> State:
    """The empty state: per stage, its layers' memory states stacked [layers, B, ...]; per part
    (RMT's memory tokens [B, p, D], the token shift's last ids [B, S]) its own."""
    return State(tuple(stage.init_state(batch) for stage in self.stages),
                 tuple(part.init_state(batch) for part in self.parts))

  def state_size(self, batch: int = 1) -> int:
    """Numbers the state carries between segments for `batch` sequences (masks not counted)."""
    shapes = jax.eval_shape(lambda: self.init_state(batch))
    return sum(x.size for x in jax.tree.leaves(shapes) if x.dtype != jnp.bool_)

  def footprint(self) -> int:
    """The paper's Table 1 formula for this model, in numbers per sequence."""
    return memories.footprint(self.cfg)

  def logits(self, h: jax.Array) -> jax.Array:
    """Final hidden states [B, T, D] -> float32 logits [B, T, W]."""
    h = self.final_norm(h)
    if self.cfg.shape.tie_embeddings:
      out = dense.token_einsum("BTD,WD->BTW", h, dense.weight(self.embed, self.dtype))
    else:
      out = dense.token_einsum("BTD,DW->BTW", h, dense.weight(self.unembed, self.dtype))
    return out.astype(jnp.float32)

  def segment(self, tokens: jax.Array, state: State, mask: jax.Array):
    """The whole stack on one segment: tokens [B, T], mask [B, T] -> (hidden [B, T, D], state)."""
    embed = self.embed[...]
    x = sh.lookup(embed, tokens).astype(self.dtype)  # [B, T, D]
    inner, carried = mask, []
    for part, part_state in zip(self.parts, state.parts):
      x, inner, part_state = part.enter(embed, x, tokens, part_state, inner)
      carried.append(part_state)
    layers = []
    for stage, stage_state in zip(self.stages, state.layers):
      x, stage_state = stage(x, stage_state, inner)
      layers.append(stage_state)
    parts = []
    for part, part_state in reversed(list(zip(self.parts, carried))):
      x, part_state = part.leave(x, part_state)
      parts.insert(0, part_state)
    parts = keep_if_empty(mask, tuple(parts), state.parts)
    return sh.constrain(x, ACTIVATION), State(tuple(layers), parts)

  def __call__(self, tokens: jax.Array, state: State | None = None,
               mask: jax.Array | None = None):
    """tokens [B, L] -> (logits [B, L, W] float32, state). For short inputs and decoding."""
    return self._scan(tokens, state, mask, (), lambda model, h, _: model.logits(h))

  def nll(self, tokens: jax.Array, targets: jax.Array, state: State | None = None,
          mask: jax.Array | None = None):
    """Per-token negative log-likelihood [B, L] float32 (0 where mask is False), and the state."""
    mask = jnp.ones(tokens.shape, bool) if mask is None else mask
    return self._scan(tokens, state, mask, (targets, mask), _chunked_nll)

  def _scan(self, tokens, state, mask, extra, readout: Callable):
    """Pads tokens [B, L] to whole segments and scans the stack over them.

    `extra` holds arrays shaped like tokens that are cut into segments alongside them and handed
    to `readout(model, hidden, extra_segment)`, whose [B, T, ...] outputs are joined back to [B, L].
    """
    B, L = tokens.shape
    T = self.cfg.shape.segment_len
    S = -(-L // T)
    if state is None:
      state = self.init_state(B)
    mask = jnp.ones((B, L), bool) if mask is None else mask.astype(bool)
    if mask.shape != (B, L):
      raise ValueError(f"mask must be [B, L] = {(B, L)}; got {mask.shape}")

    def to_segments(x):  # [B, L, ...] -> [S, B, T, ...], padding the tail with zeros / False
      x = jnp.pad(x, [(0, 0), (0, S * T - L)] + [(0, 0)] * (x.ndim - 2))
      return jnp.moveaxis(x.reshape(B, S, T, *x.shape[2:]), 1, 0)

    graphdef, params = nnx.split(self)

    def step(carry, xs):
      model = nnx.merge(graphdef, params)
      seg_tokens, seg_mask, seg_extra = xs
      h, carry = model.segment(seg_tokens, carry, seg_mask)
      return carry, readout(model, h, seg_extra)

    xs = (to_segments(tokens), to_segments(mask), jax.tree.map(to_segments, extra))
    state, out = jax.lax.scan(step, state, xs)  # out [S, B, T, ...]
    out = jnp.moveaxis(out, 0, 1).reshape(B, S * T, *out.shape[3:])[:, :L]
    return out, state

  def gates(self) -> jax.Array:
    """sigmoid(β) [layers, heads] of the layers whose memory has a gate (the paper's Figure 3)."""
    rows = [g.value().reshape(-1, g.beta.shape[-1]) for _, g in nnx.iter_graph(self)
            if isinstance(g, Gate)]
    return jnp.concatenate(rows) if rows else jnp.zeros((0, self.cfg.shape.num_heads))

  def decays(self) -> jax.Array:
    """γ [layers, kv heads] of model.infini.decay (empty without it)."""
    rows = [d.value().reshape(-1, d.logit.shape[-1]) for _, d in nnx.iter_graph(self)
            if isinstance(d, Decay)]
    return jnp.concatenate(rows) if rows else jnp.zeros((0, self.cfg.shape.num_kv_heads))

  # --- Decoding (infini_jax/generate.py): the segment scan, a few tokens at a time. ---
  # A segment's tokens read `state` (the memories of the completed segments) and the segment's
  # own earlier tokens through each memory's cache of the segment; once the segment is complete,
  # `flush` writes it into the memories. Positions restart at 0 in every segment, as in the scan.
  # A part may put positions around the segment in the layers (RMT's read and write tokens,
  # infini_jax/memories/rmt.py): `begin` runs those before it, `flush` those after it.

  def init_cache(self, batch: int) -> State:
    """Empty caches of one segment: per stage its layers' (stacked), over the segment and the
    positions the parts put around it; per part its own."""
    T = self.cfg.shape.segment_len
    width = T + sum(part.lead + part.trail for part in self.parts)
    return State(tuple(stage.init_cache(batch, width) for stage in self.stages),
                 tuple(part.init_cache(batch, T) for part in self.parts))

  def begin(self, state: State, cache: State) -> State:
    """The cache at a segment's start: what the parts put before the segment (outermost first)
    enters the layers' caches at positions 0.. (a no-op without such parts)."""
    before = [part.before(s) for part, s in zip(self.parts, state.parts) if part.lead][::-1]
    if not before:
      return cache
    _, layers = self._extend_layers(jnp.concatenate(before, axis=1), state, cache, 0)
    return cache._replace(layers=layers)

  def extend(self, tokens: jax.Array, state: State, cache: State, pos: jax.Array):
    """tokens [B, C] at positions pos..pos+C-1 of the current segment -> (hidden [B, C, D], cache).

    Outputs at positions past the segment's end are meaningless (padding). `self.logits(hidden)`
    gives the logits; what the scan would give for these tokens, when pos + C <= segment_len.
    """
    embed = self.embed[...]
    x = jnp.take(embed, tokens, axis=0).astype(self.dtype)  # [B, C, D]
    parts = []
    for part, part_state, part_cache in zip(self.parts, state.parts, cache.parts):
      x, part_cache = part.extend(embed, x, tokens, part_state, part_cache, pos)
      parts.append(part_cache)
    lead = sum(part.lead for part in self.parts)
    x, layers = self._extend_layers(x, state, cache, lead + pos)
    return x, State(layers, tuple(parts))

  def flush(self, state: State, cache: State) -> State:
    """The state after the complete segment held in `cache` (all segment_len slots written).
    What the parts put after the segment runs first, over the cached positions, and each part
    gets the outputs at its own positions (`written`)."""
    written = [None] * len(self.parts)
    after = [part.after(s) for part, s in zip(self.parts, state.parts) if part.trail]
    if after:
      lead = sum(part.lead for part in self.parts)
      h, layers = self._extend_layers(jnp.concatenate(after, axis=1), state, cache,
                                      lead + self.cfg.shape.segment_len)
      cache, start = cache._replace(layers=layers), 0
      for i, part in enumerate(self.parts):
        written[i] = h[:, start:start + part.trail] if part.trail else None
        start += part.trail
    return State(tuple(stage.flush(s, c) for stage, s, c in zip(self.stages, state.layers,
                                                                cache.layers)),
                 tuple(part.flush(s, c, w) for part, s, c, w in zip(self.parts, state.parts,
                                                                   cache.parts, written)))

  def _extend_layers(self, x: jax.Array, state: State, cache: State, pos):
    """x [B, C, D] through every stage at layer positions pos..pos+C-1 -> (x, layers' caches)."""
    layers = []
    for stage, stage_state, stage_cache in zip(self.stages, state.layers, cache.layers):
      x, stage_cache = stage.extend(x, stage_state, stage_cache, pos)
      layers.append(stage_cache)
    return x, tuple(layers)


def _chunked_nll(model: InfiniTransformer, h: jax.Array, xs) -> jax.Array:
  """The loss readout of one segment: h [B, T, D], targets and mask [B, T] -> nll [B, T].

  In chunks of LOSS_CHUNK tokens, each rematerialised (but with remat=none), so that at most one
  chunk's float32 logits [B, C, W] and their gradient are alive at a time.
  """
  targets, mask = xs
  B, T, D = h.shape

  def chunk(h, targets, mask):
    logp = jax.nn.log_softmax(model.logits(h), axis=-1)  # [B, C, W]
    nll = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    return jnp.where(mask, nll, 0.0)

  C = math.gcd(T, LOSS_CHUNK)
  if model.cfg.remat == "none" or C == T:
    return chunk(h, targets, mask)
  split = lambda x: jnp.moveaxis(x.reshape(B, T // C, C, *x.shape[2:]), 1, 0)  # noqa: E731
  body = jax.checkpoint(lambda _, xs: (None, chunk(*xs)), prevent_cse=False)
  _, out = jax.lax.scan(body, None, (split(h), split(targets), split(mask)))  # [T/C, B, C]
  return jnp.moveaxis(out, 0, 1).reshape(B, T)
