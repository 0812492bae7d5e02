"""What a model.infini.write_gate model writes to memory: the mean write strength β per layer and
head over the parts of one passkey prompt (filler, the key line's digits, the rest of the key line,
the question), key in the middle.

  python -m experiments.write_strength --config=configs/passkey.py:write_gate=true \
      --workdir=runs/pk/gated_512 [--length=2048]

Runs the model segment by segment outside jit, so that each layer's strengths can be recorded.
"""

import sys

import jax
import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from infini_jax import report
from infini_jax.memories.options import WriteGate
from infini_jax.data import passkey, tokenizer as toklib

_CONFIG = config_flags.DEFINE_config_file("config", None, "The run's config file[:args].",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "The training run's workdir.")
_LENGTH = flags.DEFINE_integer("length", 2048, "Prompt length in tokens.")
flags.mark_flags_as_required(["config", "workdir"])


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
  model, step = report.load_model(config, _WORKDIR.value)
  ex = passkey.make_passkey_example(_LENGTH.value, "middle", 5, np.random.default_rng(0), tok)
  ids = np.array([tok.bos_id] + tok.encode(ex["prompt"]), np.int32)
  parts = passkey.prompt_parts(ex["prompt"], ex["answer"])
  masks = {k: np.concatenate([[False], m]) for k, m in parts.items()}  # BOS is in no part

  recorded = []  # one [T, K] array per layer call, in call order
  original = WriteGate.weigh

  def record(self, k, w):  # the layers run in a scan: the strengths leave it through a callback
    out = original(self, k, w)
    jax.debug.callback(lambda a: recorded.append(np.asarray(a)[0]), out, ordered=True)
    return out

  WriteGate.weigh = record
  T, L = model.cfg.shape.segment_len, model.cfg.shape.num_layers
  state = model.init_state(1)
  for s in range(0, len(ids), T):
    chunk = ids[None, s:s + T]
    _, state = model.segment(chunk, state, np.ones(chunk.shape, bool))
  beta = [np.concatenate(recorded[layer::L], axis=0) for layer in range(L)]  # [tokens, K] each
  print(f"step {step}, prompt of {len(ids)} tokens, key {ex['answer']} in the middle; mean write "
        "strength, one figure per head:")
  print("| part | tokens | " + " | ".join(f"layer {i}" for i in range(L)) + " |")
  print("|---|---|" + "---|" * L)
  for name, m in masks.items():
    cells = [" ".join(f"{v:.3f}" for v in b[m].mean(0)) for b in beta]
    print(f"| {name} | {int(m.sum())} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
  app.run(main)
