"""The memory state against the KV cache: what a bounded memory saves, measured on real states.

1. The state `model.init_state(1)` carries between segments (its leaves' shapes via eval_shape,
   nothing allocated), in bytes, for the `demo` and `paper_lm` presets, against the key/value
   cache a full-attention model of the same shape needs to attend over a context of 32K ... 1M
   tokens: 2 (k and v) x layers x context x K heads x H dims x bytes of the compute dtype.
   Infini-attention's state is K·(H·V + H) float32 numbers per layer whatever the context.
2. The paper's Table 2 "memory size" column for its LM (the `paper_lm` preset with the pg19
   config's baseline sizes): each memory variant's state in numbers, `state_size` of the real
   state checked against the footprint formula (infini_jax.memories.footprint), and the
   compression ratio against Memorizing Transformers' 65K-entry store (paper: XL 50M, RMT 2.5M,
   Memorizing 183M, Infini-attention 1.6M: 114x).

  python -m bench.state_bytes        # writes bench/out/state_bytes.json and state_bytes.png
"""

from __future__ import annotations

import jax
import numpy as np
from absl import app, flags
from flax import nnx

from bench import common
from configs import models
from configs.pg19 import BASELINES
from infini_jax import memories
from infini_jax.model import DTYPES, InfiniTransformer, ModelConfig

CONTEXTS = tuple(2**k for k in range(15, 21))  # 32K ... 1M
PRESETS = ("demo", "paper_lm")
PAPER_TABLE2 = {"xl": 50e6, "memorizing": 183e6, "rmt": 2.5e6, "infini": 1.6e6}  # numbers


def state_of(cfg: ModelConfig) -> dict:
  """Numbers and bytes of the real state of one sequence (abstract: nothing is allocated)."""
  leaves = jax.tree.leaves(jax.eval_shape(
      lambda: InfiniTransformer(cfg, rngs=nnx.Rngs(0)).init_state(1)))
  return dict(numbers=int(sum(x.size for x in leaves if x.dtype != bool)),  # as state_size
              bytes=int(sum(x.size * np.dtype(x.dtype).itemsize for x in leaves)),
              footprint=int(memories.footprint(cfg)),
              leaves=[f"{np.dtype(x.dtype).name}{list(x.shape)}" for x in leaves[:3]])


def kv_cache_bytes(cfg: ModelConfig, context: int) -> int:
  itemsize = np.dtype(DTYPES[cfg.dtype]).itemsize
  return 2 * cfg.shape.num_layers * context * cfg.shape.num_kv_heads * cfg.shape.head_dim * itemsize


def plot(curves: dict, path: str) -> None:
  plt = common.pyplot()
  fig, ax = plt.subplots(figsize=(6, 4.4))
  for (preset, c), color in zip(curves.items(), ("tab:green", "tab:blue")):
    ctx = [r["context"] for r in c["rows"]]
    ax.plot(ctx, [r["kv_cache_bytes"] for r in c["rows"]], "o--", color=color,
            label=f"{preset}: full-attention KV cache")
    ax.plot(ctx, [c["state_bytes"]] * len(ctx), "o-", color=color,
            label=f"{preset}: Infini-attention state")
    last = c["rows"][-1]
    ax.annotate(f"{preset}: {last['ratio']:,.0f}x at 1M", (last["context"], np.sqrt(
        last["kv_cache_bytes"] * c["state_bytes"])), ha="right", fontsize=8, color=color)
  ax.set_xscale("log", base=2)
  ax.set_yscale("log")
  ax.set_xlabel("context (tokens)")
  ax.set_ylabel("bytes per sequence")
  ax.set_title("memory state vs KV cache")
  ax.grid(True, which="both", alpha=0.3)
  common.save_with_legend_below(fig, path, ncol=2, bottom=0.12)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  args = flags.FLAGS
  curves = {}
  for preset in PRESETS:
    cfg = models.PRESETS[preset]
    s = state_of(cfg)
    assert s["numbers"] == s["footprint"], (preset, s)
    rows = [dict(context=n, kv_cache_bytes=kv_cache_bytes(cfg, n),
                 ratio=kv_cache_bytes(cfg, n) / s["bytes"]) for n in CONTEXTS]
    curves[preset] = dict(state_bytes=s["bytes"], state_numbers=s["numbers"],
                          state_leaves=s["leaves"], dtype=cfg.dtype, rows=rows)
    print(f"{preset}: Infini state {s['bytes'] / 2**20:.2f} MiB ({s['numbers']:,} numbers); KV "
          f"cache " + ", ".join(f"{r['context'] // 1024}K {r['kv_cache_bytes'] / 2**20:,.0f} MiB "
                                f"({r['ratio']:,.0f}x)" for r in rows))
  table = {}
  for memory in ("infini", "xl", "memorizing", "compressive", "rmt"):
    cfg = models.PRESETS["paper_lm"].replace(
        memory=memory, **{k: v for k, v in BASELINES.items() if k == memory})
    s = state_of(cfg)
    table[memory] = dict(numbers=s["numbers"], footprint_formula=s["footprint"],
                         bytes=s["bytes"], paper_numbers=PAPER_TABLE2.get(memory))
  base = table["memorizing"]["numbers"]
  for memory, r in table.items():
    r["compression_vs_memorizing"] = base / r["numbers"]
    paper = f" (paper {r['paper_numbers'] / 1e6:g}M)" if r["paper_numbers"] else ""
    print(f"paper_lm {memory:11s} state {r['numbers'] / 1e6:7.2f}M numbers{paper}, formula "
          f"{r['footprint_formula'] / 1e6:.2f}M, {r['compression_vs_memorizing']:6.1f}x smaller "
          "than Memorizing (65K)")
  path = common.write("state_bytes", dict(contexts=CONTEXTS, curves=curves, paper_lm_table2=table))
  plot(curves, common.out_path("state_bytes.png"))
  print("wrote", path, "and state_bytes.png")


def define_flags():
  flags.DEFINE_bool("quick", False, "No effect: this benchmark takes seconds.")


if __name__ == "__main__":
  define_flags()
  app.run(main)
