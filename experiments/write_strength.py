"""What a model.infini.write_gate model writes to memory: the mean write strength β per layer and
head over the parts of one passkey prompt (filler, the key line's digits, the rest of the key line,
the question), key in the middle, and the key digits' share of each head's writes over the prompt.
The filler is the run's own (config.data.passkey_filler): with book filler, cut from `--split`'s
book (default the held-out test book, as the sweeps use).

  python -m experiments.write_strength --config=configs/passkey.py:write_gate=true \
      --workdir=runs/pk/gated_512 [--length=2048] [--split=test]
"""

import sys

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging
from flax import nnx
from ml_collections import config_flags

from infini_jax import report
from infini_jax.memories.options import WriteGate
from infini_jax.data import passkey, tokenizer as toklib

def prompt(data, length: int, split: str, tok) -> tuple[np.ndarray, dict[str, np.ndarray], str]:
  """One prompt of `length` tokens, key in the middle, filler as config.data `data` makes it.
  -> (ids int32 [1 + length] with BOS first, the parts' token masks (BOS in none), the key)."""
  filler = data.get("passkey_filler", "repeat")
  stream = None if filler == "repeat" else passkey.filler_tokens(
      filler, data.get("passkey_filler_glob", ""), split, tok)
  ex = passkey.make_passkey_example(length, "middle", 5, np.random.default_rng(0), tok, stream)
  ids = np.array([tok.bos_id] + tok.encode(ex["prompt"]), np.int32)
  if len(ids) != len(ex["prompt"]) + 1:  # the parts are character masks
    raise ValueError("write_strength: the prompt has characters of more than one byte; the "
                     "parts need one token per character (ASCII filler)")
  parts = passkey.prompt_parts(ex["prompt"], ex["answer"])
  return ids, {k: np.concatenate([[False], m]) for k, m in parts.items()}, ex["answer"]


def strengths(model, ids: np.ndarray) -> list[np.ndarray]:
  """Each layer's write strength of every token of `ids` [tokens]: one float [tokens, K] array
  per layer, the stream run segment by segment with its state carried (one jitted segment; the
  strengths leave it through an ordered callback, in the order the layers run)."""
  recorded = []  # one [T, K] array per layer call, in call order
  original = WriteGate.weigh

  def record(self, k, w):  # the layers run in a scan: the strengths leave it through a callback
    out = original(self, k, w)
    jax.debug.callback(lambda a: recorded.append(np.asarray(a)[0]), out, ordered=True)
    return out

  WriteGate.weigh = record
  try:
    T, L = model.cfg.shape.segment_len, model.cfg.shape.num_layers
    step = nnx.jit(lambda m, chunk, state: m.segment(chunk, state, jnp.ones(chunk.shape, bool))[1])
    state = model.init_state(1)
    for s in range(0, len(ids), T):
      state = step(model, ids[None, s:s + T], state)
    jax.effects_barrier()
  finally:
    WriteGate.weigh = original
  return [np.concatenate(recorded[layer::L], axis=0) for layer in range(L)]


def heads(values: np.ndarray) -> str:
  """One figure per head, 3 significant digits: a strength of 2e-05 is not printed as 0."""
  return " ".join(f"{v:.3g}" for v in values)


def table(beta: list[np.ndarray], masks: dict[str, np.ndarray]) -> list[str]:
  """Markdown rows: the mean strength of each part, one figure per head, each head's sum over
  the prompt, and the key digits' share of that sum (what the read at the question can weigh
  the key by, before σ(q)·σ(k) tells tokens apart)."""
  L = len(beta)
  rows = ["| part | tokens | " + " | ".join(f"layer {i}" for i in range(L)) + " |",
          "|---|---|" + "---|" * L]
  for name, m in masks.items():
    rows.append(f"| {name} | {int(m.sum())} | " + " | ".join(heads(b[m].mean(0)) for b in beta)
                + " |")
  n = len(masks["key digits"])
  rows.append(f"| all writes (sum) | {n} | " + " | ".join(heads(b.sum(0)) for b in beta) + " |")
  share = [heads(b[masks["key digits"]].sum(0) / b.sum(0)) for b in beta]
  rows.append(f"| key digits' share of the writes | {n} | " + " | ".join(share) + " |")
  return rows


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)
  config = _CONFIG.value
  if not config.model.infini.write_gate:
    sys.exit("write_strength: the config has model.infini.write_gate off: there is nothing to show")
  tok = toklib.get_tokenizer(config.data.tokenizer)
  if not isinstance(tok, toklib.ByteTokenizer):
    sys.exit("write_strength: needs the byte tokenizer (one token per character)")
  ids, masks, key = prompt(config.data, _LENGTH.value, _SPLIT.value, tok)
  model, step = report.load_model(config, _WORKDIR.value)
  beta = strengths(model, ids)
  filler = config.data.get("passkey_filler", "repeat")
  print(f"step {step}, prompt of {len(ids)} tokens ({filler} filler), key {key} in the middle; "
        "mean write strength, one figure per head:")
  print("\n".join(table(beta, masks)))


if __name__ == "__main__":
  # Flags only when run: the tests import prompt and strengths next to modules that define --config.
  _CONFIG = config_flags.DEFINE_config_file("config", None, "The run's config file[:args].",
                                            lock_config=True)
  _WORKDIR = flags.DEFINE_string("workdir", None, "The training run's workdir.")
  _LENGTH = flags.DEFINE_integer("length", 2048, "Prompt length in tokens.")
  _SPLIT = flags.DEFINE_enum("split", "test", ["train", "validation", "test"],
                             "Which split's text the filler is cut from (book filler only).")
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main)
