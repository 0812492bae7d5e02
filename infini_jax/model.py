"""The decoder LM: pre-norm blocks over segments, one explicit memory state per layer.

Axis legend: B batch, L input length, S number of segments, T segment length, D model dim,
F feed-forward dim, W vocabulary size.

Data flow: tokens [B, L] -> padded to S·T and cut into segments -> `jax.lax.scan` over segments
(segment-major: each step runs the whole stack on one segment, so the state of every layer is the
scan's carry) -> one output per segment. The readout (logits, or the loss) is computed inside the
scan, so a long input never materialises [B, L, W] logits. Each segment step is rematerialised with
the configured policy: back-propagation through time keeps only the carries between segments.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import nnx

from infini_jax import dense
from infini_jax import sharding as sh
from infini_jax import memories
from infini_jax import rope as ropelib
from infini_jax.attention import InfiniAttention, param, write_cache
from infini_jax.local_attention import IMPLEMENTATIONS
from infini_jax.memories import MEMORIES
from infini_jax.memories.infini import InfiniXLState
from infini_jax.memory import RULES, CompressiveMemory

REMAT_POLICIES: dict[str, Any] = {
    "none": None,  # no rematerialisation: fastest, memory grows with the number of segments
    "full": jax.checkpoint_policies.nothing_saveable,  # keep only the carries between segments
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,  # keep matmul outputs
}
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
ATTENTION_IMPLS = tuple(IMPLEMENTATIONS)
ACTIVATION = (sh.BATCH, sh.LENGTH, None)  # block boundaries: split over the batch only


def constrain_state(layer_state):
  """Memory states live with their batch rows; the compressive memory [B, K, H, V] also with its
  key/value heads."""
  if isinstance(layer_state, InfiniXLState):  # model.xl_cache: each part as it is alone
    return InfiniXLState(*map(constrain_state, layer_state))
  heads = (sh.KV_HEADS,) if isinstance(layer_state, CompressiveMemory) else (None,)
  return jax.tree.map(lambda a: sh.constrain(a, (sh.BATCH,) + heads[:a.ndim - 1] +
                                             (None,) * (a.ndim - 2)), layer_state)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """The model's shape and numerics; presets live in configs/models.py."""

  vocab_size: int
  d_model: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  mlp_dim: int
  segment_len: int
  memory: str = "infini"
  rule: str = "linear"
  gate_init: float = 0.0
  rope_theta: float = 10_000.0
  # RoPE frequency rescaling (infini_jax/rope.py): "none", or "llama3" as in Llama 3.1 and 3.2.
  rope_scaling: str = "none"
  rope_scaling_factor: float = 1.0
  rope_low_freq_factor: float = 1.0
  rope_high_freq_factor: float = 4.0
  rope_original_max_len: int = 8192
  norm_eps: float = 1e-5
  tie_embeddings: bool = False
  dtype: str = "float32"  # compute dtype; memory math, softmax, gate and loss stay float32
  param_dtype: str = "float32"
  remat: str = "full"
  # Causal attention inside a segment (infini_jax/local_attention.py): "blocked" (query blocks
  # over their key prefix; fastest on CPU) or "xla" (jax.nn.dot_product_attention: cuDNN flash
  # attention on GPU in bfloat16/float16, XLA's path elsewhere).
  attention_impl: str = "blocked"
  # The baselines' settings (infini_jax/memories): memorizing's store entries per head or
  # compressive's compressed slots; memorizing's top-k and kNN layer (-1: 3/4 deep); compressive's
  # rate; RMT's memory tokens.
  memory_size: int = 0
  topk: int = 32
  knn_layer: int = -1
  compress_rate: int = 4
  memory_tokens: int = 0
  # Beyond the paper, off by default (docs/RESULTS.md measures them on passkey retrieval):
  # token_shift: the input of token t also gets the embeddings of tokens t-1..t-S (S =
  # token_shift), each with a learned per-channel weight, carried across segments in the state,
  # so that a key written to memory can say what came before it (a one-layer induction key).
  # token_shift_init: where those weights start. 1 gives the first layer a bag of the last S + 1
  # tokens, in which the current one is not yet told apart; 0 starts as the model without the
  # shift and lets the gradient bring the previous tokens in (docs/RESULTS.md measures both).
  # memory_scale: a learned per-head scale on q and k before σ (InfiniAttention.memory_qk).
  # write_gate: a learned per-token strength of each memory write (InfiniAttention.write_strength),
  # so that tokens worth nothing later (filler) need not pile up in M and z.
  # memory_decay: a learned per-head decay of the memory before each segment's write
  # (InfiniAttention.decay), so that the read weighs recent segments more than old ones.
  # xl_cache: Infini's local attention also sees the previous segment's keys and values, as
  # Transformer-XL's does: exact recent context beside the compressive memory of everything.
  # query_gate: the gate becomes sigmoid(β + q·w) per token and head (InfiniAttention.mix), so
  # that a head can read the memory for some tokens and its local context for others.
  # memory_add: the gated memory read is added to the local output, g·A_mem + A_dot, instead of
  # mixed with it (InfiniAttention.mix), so that a head keeps its whole local output.
  token_shift: int = 0
  token_shift_init: float = 1.0
  memory_scale: bool = False
  write_gate: bool = False
  memory_decay: bool = False
  xl_cache: bool = False
  query_gate: bool = False
  memory_add: bool = False

  def __post_init__(self):
    for name in ("vocab_size", "d_model", "num_layers", "num_heads", "num_kv_heads", "head_dim",
                 "mlp_dim", "segment_len"):
      if getattr(self, name) <= 0:
        raise ValueError(f"model.{name} must be positive; got {getattr(self, name)}")
    if self.dtype not in DTYPES or self.param_dtype not in DTYPES:
      raise ValueError(f"model.dtype and model.param_dtype must be one of {tuple(DTYPES)}; "
                       f"got {self.dtype!r}, {self.param_dtype!r}")
    if self.remat not in REMAT_POLICIES:
      raise ValueError(f"unknown model.remat {self.remat!r}; use one of {tuple(REMAT_POLICIES)}")
    if self.attention_impl not in ATTENTION_IMPLS:
      raise ValueError(f"unknown model.attention_impl {self.attention_impl!r}; use one of "
                       f"{ATTENTION_IMPLS}")
    if self.memory not in MEMORIES:
      raise ValueError(f"unknown model.memory {self.memory!r}; use one of {MEMORIES}")
    if self.rule not in RULES:
      raise ValueError(f"unknown model.rule {self.rule!r}; use one of {RULES}")
    if self.num_heads % self.num_kv_heads:
      raise ValueError(f"model.num_heads={self.num_heads} must be a multiple of "
                       f"model.num_kv_heads={self.num_kv_heads}")
    ropelib.scaling_of(self)  # raises on an unknown model.rope_scaling
    if self.token_shift < 0:
      raise ValueError(f"model.token_shift must be >= 0; got {self.token_shift}")
    if self.token_shift_init != 1.0 and not self.token_shift:
      raise ValueError(f"model.token_shift_init={self.token_shift_init} has no effect without "
                       "model.token_shift: set model.token_shift > 0 or leave the init at 1")
    if not math.isfinite(self.token_shift_init):
      raise ValueError(f"model.token_shift_init must be a finite number; got "
                       f"{self.token_shift_init}")
    for name, what in (("memory_scale", "scales the compressive memory's q and k"),
                       ("write_gate", "weighs the compressive memory's writes"),
                       ("memory_decay", "fades the compressive memory"),
                       ("xl_cache", "adds Transformer-XL's cache to Infini-attention"),
                       ("query_gate", "makes Infini-attention's gate depend on the query"),
                       ("memory_add", "adds Infini-attention's memory read to its local output")):
      if getattr(self, name) and self.memory != "infini":
        raise ValueError(f"model.{name} {what}: it needs memory='infini', not {self.memory!r}")
    if self.memory_scale and self.rule == "deltanet":
      raise ValueError("model.memory_scale has no effect with rule='deltanet', whose features "
                       "are unit length whatever the scale: turn one of them off")
    if self.memory == "rmt" and self.memory_tokens < 1:
      raise ValueError("memory=rmt needs model.memory_tokens >= 1 (the paper's RMT uses 100s)")
    if self.memory == "memorizing" and not 0 <= memories.knn_layer(self) < self.num_layers:
      raise ValueError(f"model.knn_layer={self.knn_layer} is not a layer of {self.num_layers}")
    for i in range(self.num_layers):
      memories.for_layer(self, i)  # each memory checks its own settings

  def flops_per_token(self) -> float:
    """Forward FLOPs per token: the matmuls the model runs (2 per multiply-add), as
    tests/test_flops.py counts them in its jaxpr, with one convention: segment attention counts
    its whole T x keys square, as peers count it, where the blocked path skips the masked
    triangle of segments longer than its query block."""
    D, N, K, H, F, T = (self.d_model, self.num_heads, self.num_kv_heads, self.head_dim,
                        self.mlp_dim, self.segment_len)
    proj = 2 * D * (N * H + 2 * K * H) + 2 * N * H * D  # q, k, v, o
    mlp = 6 * D * F
    # RMT runs the stack on p read and p write tokens beside every segment's T tokens.
    positions = T + 2 * self.memory_tokens if self.memory == "rmt" else T
    total = 0.0
    for i in range(self.num_layers):
      layer = memories.for_layer(self, i)
      keys, extra = positions, 0.0
      if isinstance(layer, memories.XL):
        keys = 2 * T
      elif isinstance(layer, memories.Memorizing):  # score the whole store, read the top k
        extra = 2 * layer.M * N * H + 2 * layer.topk * N * H
      elif isinstance(layer, memories.Compressive):  # keys and values of its c + T stored states
        keys, extra = layer.c + 2 * T, 2 * D * 2 * K * H * (layer.c + T) / T
      elif isinstance(layer, memories.Infini):
        keys, extra = (T if layer.xl is None else 2 * T), _infini_memory_flops(layer, N, T)
      total += (proj + 4 * keys * N * H + extra + mlp) * positions / T
    return total + 2 * D * self.vocab_size


def _infini_memory_flops(layer: memories.Infini, N: int, T: int) -> float:
  """Per token: the compressive memory's read and write (infini_jax/memory.py), its gates."""
  K, H = layer.K, layer.H
  if layer.rule == "deltanet":  # read φ(q) M; write: the T x T key Gram, φ(k) M, φ(k)ᵀ U
    flops = 2 * N * H * H + 2 * T * K * H + 2 * K * H * H + 2 * K * H * H
  else:  # read σ(q) M and σ(q) z; write σ(k)ᵀ v (z's update is a sum, not a matmul)
    flops = 2 * N * H * H + 2 * N * H + 2 * K * H * H
    if layer.rule == "delta":  # the memory's own read of each key before the write
      flops += 2 * K * H * H + 2 * K * H
  if layer.write_gated:
    flops += 2 * K * H
  if layer.query_gated:
    flops += 2 * N * H
  return flops


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
    gate = dense.token_einsum("BTD,DF->BTF", x, self.w_gate[...].astype(self.dtype))
    up = dense.token_einsum("BTD,DF->BTF", x, self.w_up[...].astype(self.dtype))
    hidden = jax.nn.silu(gate) * up
    return dense.token_einsum("BTF,FD->BTD", hidden, self.w_down[...].astype(self.dtype))


class Block(nnx.Module):

  def __init__(self, cfg: ModelConfig, index: int, rngs: nnx.Rngs):
    dtype, param_dtype = DTYPES[cfg.dtype], DTYPES[cfg.param_dtype]
    self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps, param_dtype)
    self.attn = InfiniAttention(
        cfg.d_model, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim,
        memory=memories.for_layer(cfg, index),
        rule=cfg.rule, gate_init=cfg.gate_init, rope_theta=cfg.rope_theta, dtype=dtype,
        param_dtype=param_dtype, rope_scaling=ropelib.scaling_of(cfg),
        attention_impl=cfg.attention_impl, rngs=rngs)
    self.mlp_norm = RMSNorm(cfg.d_model, cfg.norm_eps, param_dtype)
    self.mlp = MLP(cfg.d_model, cfg.mlp_dim, dtype, param_dtype, rngs)

  def __call__(self, x, state, mask):
    y, state = self.attn(self.attn_norm(x), state, mask)
    x = x + y
    return x + self.mlp(self.mlp_norm(x)), state

  def extend(self, x, state, cache, pos):
    """Decoding: `__call__` for the next tokens of the current segment (see InfiniAttention)."""
    y, cache = self.attn.extend(self.attn_norm(x), state, cache, pos)
    x = x + y
    return x + self.mlp(self.mlp_norm(x)), cache


class InfiniTransformer(nnx.Module):
  """Decoder-only LM whose attention layers carry a compressive memory across segments.

  `model(tokens, state, mask)` returns (logits, state); `model.nll(tokens, targets, state, mask)`
  returns (per-token negative log-likelihood, state) without materialising all the logits. Both run
  the same segment scan. `state=None` starts from empty memories (`init_state`). Calling on a long
  input at once or chunk by chunk (chunks a multiple of segment_len), passing the state along,
  gives the same result.
  """

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.dtype = DTYPES[cfg.dtype]
    param_dtype = DTYPES[cfg.param_dtype]
    # Embedding rows have unit scale: the input of the first norm, not of a matmul. Tied, they
    # are also the unembedding, whose logits would then start at std sqrt(D) (a loss of ~45 for
    # the 1b preset): scaled by D^-1/2, the first loss is near log(vocab) either way.
    scale = cfg.d_model ** -0.5 if cfg.tie_embeddings else 1.0
    self.embed = nnx.Param(
        scale * jax.random.normal(rngs.params(), (cfg.vocab_size, cfg.d_model), param_dtype),
        sharding=(sh.VOCAB, sh.EMBED), eager_sharding=False)
    self.blocks = nnx.List([Block(cfg, i, rngs) for i in range(cfg.num_layers)])
    if cfg.memory == "rmt":
      # RMT's initial memory tokens, read at the start of the first segment.
      self.memory_init = nnx.Param(
          jax.random.normal(rngs.params(), (cfg.memory_tokens, cfg.d_model), param_dtype),
          sharding=(None, sh.EMBED), eager_sharding=False)
    if cfg.token_shift:
      # Weight of the embedding of token t-1-j in the input of token t, per channel.
      self.shift_mix = nnx.Param(
          jnp.full((cfg.token_shift, cfg.d_model), cfg.token_shift_init, param_dtype),
          sharding=(None, sh.EMBED), eager_sharding=False)
    self.final_norm = RMSNorm(cfg.d_model, cfg.norm_eps, param_dtype)
    if not cfg.tie_embeddings:
      self.unembed = param(rngs, (cfg.d_model, cfg.vocab_size), (sh.EMBED, sh.VOCAB), 0, 1,
                           param_dtype)

  def init_state(self, batch: int) -> tuple:
    """The empty state: one entry per layer (a CompressiveMemory, an XL cache, ..., or None),
    then, for RMT only, the memory tokens [B, p, D], then, with token_shift S, the last S token
    ids [B, S] int32 (0 before the first token)."""
    state = tuple(block.attn.init_state(batch) for block in self.blocks)
    if self.cfg.memory == "rmt":
      tokens = jnp.broadcast_to(self.memory_init[...], (batch,) + self.memory_init.shape)
      state += (tokens.astype(self.dtype),)
    if self.cfg.token_shift:
      state += (jnp.zeros((batch, self.cfg.token_shift), jnp.int32),)
    return state

  def state_size(self, batch: int = 1) -> int:
    """Numbers the state carries between segments for `batch` sequences (masks not counted)."""
    shapes = jax.eval_shape(lambda: self.init_state(batch))
    return sum(x.size for x in jax.tree.leaves(shapes) if x.dtype != jnp.bool_)

  def logits(self, h: jax.Array) -> jax.Array:
    """Final hidden states [B, T, D] -> float32 logits [B, T, W]."""
    h = self.final_norm(h)
    if self.cfg.tie_embeddings:
      out = dense.token_einsum("BTD,WD->BTW", h, self.embed[...].astype(self.dtype))
    else:
      out = dense.token_einsum("BTD,DW->BTW", h, self.unembed[...].astype(self.dtype))
    return out.astype(jnp.float32)

  def segment(self, tokens: jax.Array, state: tuple, mask: jax.Array):
    """The whole stack on one segment: tokens [B, T], mask [B, T] -> (hidden [B, T, D], state)."""
    layers, extra = state[:self.cfg.num_layers], list(state[self.cfg.num_layers:])
    x = jnp.take(self.embed[...], tokens, axis=0).astype(self.dtype)  # [B, T, D]
    T = x.shape[1]
    shifted = []
    if self.cfg.token_shift:
      prev = extra.pop()  # [B, S]: the tokens before this segment
      ids = jnp.concatenate([prev, tokens], axis=1)  # [B, S + T]
      x = self._shift(x, ids)
      # Padded tokens (mask False) only come at a stream's end, so the last S ids are carried.
      shifted = [ids[:, -self.cfg.token_shift:]]
    if self.cfg.memory == "rmt":
      # RMT: the memory tokens are read before the segment and written after it; the outputs of
      # the write tokens are the next segment's memory, the only path between segments.
      read = extra.pop()  # [B, p, D]
      x = jnp.concatenate([read, x, read], axis=1)  # [B, p + T + p, D]
      p = read.shape[1]
      mask = jnp.pad(mask, [(0, 0), (p, p)], constant_values=True)
    new_state = []
    for block, layer_state in zip(self.blocks, layers):
      x = sh.constrain(x, ACTIVATION)
      x, layer_state = block(x, layer_state, mask)
      new_state.append(constrain_state(layer_state))
    if self.cfg.memory == "rmt":
      x, written = x[:, p:p + T], x[:, p + T:]
      new_state.append(written)
    return sh.constrain(x, ACTIVATION), tuple(new_state + shifted)

  def _shift(self, x: jax.Array, ids: jax.Array) -> jax.Array:
    """token_shift: x [B, C, D] plus the weighted embeddings of the S tokens before each of its
    C tokens; ids [B, S + C] are the S tokens before x's first one, then x's own."""
    S, C = self.cfg.token_shift, x.shape[1]
    e = jnp.take(self.embed[...], ids, axis=0)  # [B, S + C, D], one gather for every offset
    for j in range(S):  # token t gets token t-1-j
      x = x + (e[:, S - 1 - j:S - 1 - j + C] * self.shift_mix[j]).astype(self.dtype)
    return x

  def __call__(self, tokens: jax.Array, state: tuple | None = None,
               mask: jax.Array | None = None):
    """tokens [B, L] -> (logits [B, L, W] float32, state). For short inputs and decoding."""
    return self._scan(tokens, state, mask, (), lambda model, h, _: model.logits(h))

  def nll(self, tokens: jax.Array, targets: jax.Array, state: tuple | None = None,
          mask: jax.Array | None = None):
    """Per-token negative log-likelihood [B, L] float32 (0 where mask is False), and the state."""

    def readout(model, h, xs):
      seg_targets, seg_mask = xs
      logp = jax.nn.log_softmax(model.logits(h), axis=-1)  # [B, T, W]
      nll = -jnp.take_along_axis(logp, seg_targets[..., None], axis=-1)[..., 0]
      return jnp.where(seg_mask, nll, 0.0)

    mask = jnp.ones(tokens.shape, bool) if mask is None else mask
    return self._scan(tokens, state, mask, (targets, mask), readout)

  def _scan(self, tokens, state, mask, extra, readout: Callable):
    """Pads tokens [B, L] to whole segments and scans the stack over them.

    `extra` holds arrays shaped like tokens that are cut into segments alongside them and handed
    to `readout(model, hidden, extra_segment)`, whose [B, T, ...] outputs are joined back to [B, L].
    """
    B, L = tokens.shape
    T = self.cfg.segment_len
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

    def step(params, carry, xs):
      model = nnx.merge(graphdef, params)
      seg_tokens, seg_mask, seg_extra = xs
      h, carry = model.segment(seg_tokens, carry, seg_mask)
      return carry, readout(model, h, seg_extra)

    policy = REMAT_POLICIES[self.cfg.remat]
    if self.cfg.remat != "none":
      step = jax.checkpoint(step, policy=policy, prevent_cse=False)
    xs = (to_segments(tokens), to_segments(mask), jax.tree.map(to_segments, extra))
    state, out = jax.lax.scan(lambda c, x: step(params, c, x), state, xs)  # out [S, B, T, ...]
    out = jnp.moveaxis(out, 0, 1).reshape(B, S * T, *out.shape[3:])[:, :L]
    return out, state

  def gates(self) -> jax.Array:
    """sigmoid(β) [layers, heads] for the gate analysis (the paper's Figure 3)."""
    return jnp.stack([block.attn.gate_value() for block in self.blocks])

  # --- Decoding (infini_jax/generate.py): the segment scan, a few tokens at a time. ---
  # A segment's tokens read `state` (the memories of the completed segments) and the segment's
  # own earlier tokens through a key/value cache; once the segment is complete, `flush` writes it
  # into the memories. Positions restart at 0 in every segment, as in the scan.

  # With token_shift the cache also holds the segment's token ids [B, T], and the state's last
  # entry (the S ids before the segment) is renewed by `flush`, as the scan renews it.

  def init_cache(self, batch: int) -> tuple:
    """Empty key/value caches, one per layer, each for one segment (then the ids, see above)."""
    if self.cfg.memory not in ("infini", "local", "full") or self.cfg.xl_cache:
      what = "model.xl_cache" if self.cfg.xl_cache else self.cfg.memory
      raise ValueError(f"key/value-cache decoding supports memory=infini (without xl_cache), "
                       f"local and full, not {what}; evaluate perplexity or score with "
                       "evaluate.TeacherForced instead")
    T = self.cfg.segment_len
    cache = tuple(block.attn.init_cache(batch, T) for block in self.blocks)
    if self.cfg.token_shift:
      cache += (jnp.zeros((batch, T), jnp.int32),)
    return cache

  def extend(self, tokens: jax.Array, state: tuple, cache: tuple, pos: jax.Array):
    """tokens [B, C] at positions pos..pos+C-1 of the current segment -> (hidden [B, C, D], cache).

    Outputs at positions past the segment's end are meaningless (padding). `self.logits(hidden)`
    gives the logits; what the scan would give for these tokens, when pos + C <= segment_len.
    """
    L = self.cfg.num_layers
    x = jnp.take(self.embed[...], tokens, axis=0).astype(self.dtype)  # [B, C, D]
    shifted = ()
    if self.cfg.token_shift:
      S, C = self.cfg.token_shift, tokens.shape[1]
      seg_ids = write_cache(cache[L], tokens, pos)  # [B, T]
      ids = jnp.concatenate([state[L], seg_ids, jnp.zeros_like(tokens)], axis=1)  # [B, S+T+C]
      x = self._shift(x, jax.lax.dynamic_slice_in_dim(ids, pos, S + C, axis=1))
      shifted = (seg_ids,)
    new_cache = []
    for block, layer_state, layer_cache in zip(self.blocks, state, cache):
      x, layer_cache = block.extend(x, layer_state, layer_cache, pos)
      new_cache.append(layer_cache)
    return x, tuple(new_cache) + shifted

  def flush(self, state: tuple, cache: tuple) -> tuple:
    """The state after the complete segment held in `cache` (all segment_len slots written)."""
    L = self.cfg.num_layers
    new = tuple(block.attn.flush(s, c) for block, s, c in zip(self.blocks, state, cache))
    if self.cfg.token_shift:
      ids = jnp.concatenate([state[L], cache[L]], axis=1)  # [B, S + T]
      new += (ids[:, -self.cfg.token_shift:],)
    return new
