"""One Infini-attention layer over a long sequence: tokens/s, compiled memory and MFU.

Shape (the one public implementations report): d_model 512, 8 heads of 64, segment 1024, sequence
8192, batch 1, float32. Compared in the same run with full causal attention over all 8192 tokens,
with attention through jax.nn.dot_product_attention (attention_impl "xla"), and with XLA's
float32 matmul peak on this machine, measured right before and after each row's timed runs.

FLOPs per token (forward), the layer's matmuls (tests/test_flops.py counts them in its jaxpr), D
model dim, N heads, H head dim, T segment:
  projections  2·D·3·N·H + 2·N·H·D             q, k, v and o
  attention    2·T·N·H + 2·T·N·H               q kᵀ and p v over the full T x T square, as peers
                                               count it (the blocked path skips the masked half)
  memory       2·N·H·H + 2·N·H + 2·N·H·H       read (numerator, denominator), write M (z's
                                               update is a sum, not a matmul)
forward+backward = 3 x forward. Rematerialisation's extra forward is not counted (as in MFU).

  python -m bench.layer            # writes bench/out/layer.json and layer.png
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from absl import app
from flax import nnx

from bench import common
from infini_jax import memories
from infini_jax.attention import Attention
from infini_jax.flops import layer_flops_per_token

D, N, H, T, L, B = 512, 8, 64, 1024, 8192, 1


def flops_per_token(segment: int, memory: bool) -> float:
  """The layer's forward matmul FLOPs per token (infini_jax.flops.layer_flops_per_token)."""
  return layer_flops_per_token(D, N, H, segment, memory)


# Rematerialisation per segment: None, or a jax.checkpoint policy (what the backward may keep).
REMAT = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,  # keep only the carries between segments
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,  # keep projection outputs
}


def make_layer(memory: str = "infini", attention_impl: str = "blocked") -> Attention:
  """The benchmark's layer: the paper's Infini memory, or local attention alone."""
  segment_memory = memories.paper(N, N, H) if memory == "infini" else memories.Local(N, H)
  return Attention(D, N, N, H, segment_memory, attention_impl=attention_impl, rngs=nnx.Rngs(0))


def scanned(layer: Attention, segment: int, remat: str):
  """x [B, L, D] -> y [B, L, D], the layer scanned over segments with its memory as the carry."""
  graphdef, params = nnx.split(layer)

  def step(params, state, x):
    y, state = nnx.merge(graphdef, params)(x, state)
    return state, y

  if remat != "none":
    step = jax.checkpoint(step, policy=REMAT[remat], prevent_cse=False)

  def run(params, x):
    xs = jnp.moveaxis(x.reshape(B, L // segment, segment, D), 1, 0)
    _, ys = jax.lax.scan(lambda s, xi: step(params, s, xi), layer.init_state(B), xs)
    return jnp.moveaxis(ys, 0, 1).reshape(B, L, D)

  return params, run


def measure(name: str, memory: str, segment: int, remat: str, attention_impl: str = "blocked"
            ) -> dict:
  layer = make_layer(memory, attention_impl)
  params, run = scanned(layer, segment, remat)
  x = jax.random.normal(jax.random.key(1), (B, L, D))
  fwd = jax.jit(run)
  fwd_bwd = jax.jit(jax.value_and_grad(lambda p, x: jnp.sum(run(p, x) ** 2), argnums=(0, 1)))
  fwd_bytes = common.compiled_bytes(fwd, params, x)
  train_bytes = common.compiled_bytes(fwd_bwd, params, x)
  jax.block_until_ready((fwd(params, x), fwd_bwd(params, x)))  # compiled outside the bracket
  # The matmul peak right before and right after the timed runs (shared machine): MFU uses the
  # higher of the two; the JSON keeps both and their spread.
  with common.Bracket() as bracket:
    t_fwd = common.time_call(fwd, params, x)
    t_train = common.time_call(fwd_bwd, params, x)
  flops = flops_per_token(segment, memory == "infini") * B * L
  row = dict(
      name=name, remat=remat, attention_impl=attention_impl,
      fwd_tokens_per_s=B * L / t_fwd, train_tokens_per_s=B * L / t_train,
      fwd_mfu=flops / t_fwd / bracket.peak, train_mfu=3 * flops / t_train / bracket.peak,
      fwd_bytes=fwd_bytes, train_bytes=train_bytes, **bracket.as_dict())
  print(f"{name:42s} fwd {row['fwd_tokens_per_s']:6.0f} tok/s ({row['fwd_mfu']:5.1%})  fwd+bwd "
        f"{row['train_tokens_per_s']:5.0f} tok/s ({row['train_mfu']:5.1%})  memory fwd+bwd "
        f"{train_bytes / 2**20:5.0f} MiB  peak {bracket.before / 1e9:.0f} -> "
        f"{bracket.after / 1e9:.0f} GFLOP/s", flush=True)
  return row


def plot(rows: list[dict], path: str) -> None:
  plt = common.pyplot()
  fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.2), sharey=True)
  y = range(len(rows))
  left.barh(y, [r["train_tokens_per_s"] for r in rows], color="tab:blue")
  for i, r in enumerate(rows):
    left.text(r["train_tokens_per_s"], i, f" {r['train_mfu']:.0%} MFU", va="center", fontsize=7)
  left.set_xlabel("fwd+bwd tokens / s")
  left.set_yticks(list(y), [r["name"] for r in rows], fontsize=7)
  left.invert_yaxis()
  right.barh(y, [r["train_bytes"] / 2**20 for r in rows], color="tab:gray")
  for i, r in enumerate(rows):
    right.text(r["train_bytes"] / 2**20, i, f" {r['train_bytes'] / 2**20:,.0f}", va="center",
               fontsize=7)
  right.set_xlabel("XLA-planned memory, fwd+bwd (MiB)")
  fig.suptitle(f"one layer, d_model {D}, {N} heads of {H}, {L} tokens", fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=120)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]} (the benchmark takes none)")
  rows = [
      measure("infini, segment 1024, remat", "infini", T, "full"),
      measure("infini, segment 1024, remat dots", "infini", T, "dots"),
      measure("infini, segment 1024, no remat", "infini", T, "none"),
      measure("infini, segment 1024, remat, xla attention", "infini", T, "full", "xla"),
      measure("full causal, 8192", "local", L, "none"),
  ]
  print("wrote", common.write("layer", dict(rows=rows)))
  plot(rows, common.out_path("layer.png"))


if __name__ == "__main__":
  app.run(main)
