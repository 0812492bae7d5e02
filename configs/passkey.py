"""Passkey retrieval far beyond the training length, at laptop scale (the paper's Table 3, shrunk).

A 2-layer byte-level model (d 128, segment 128) trains on 2K-token passkey prompts, the key at a
random place, then streams prompts of 2K ... 1M tokens with the key at the start, middle and end.
About an hour of training on one CPU core; docs/RESULTS.md has the figures and the diagnosis.

  python train.py --config=configs/passkey.py --workdir=runs/passkey            # tuned recipe
  python train.py --config=configs/passkey.py:recipe=paper --workdir=runs/pk_paper
  python train.py --config=configs/passkey.py:memory=xl --workdir=runs/pk_xl    # local, xl
  python eval.py --config=configs/passkey.py --workdir=runs/passkey             # the sweep

`recipe`: "paper" is Infini-attention as published. "tuned" (the default here) adds two options
beyond the paper, each a model setting whose default stays the paper's: token_shift=8 (a key
written to memory carries the 8 tokens before it: the context "pass key is" that the question
repeats) and memory_scale (a learned scale on q and k before σ, so that filler piling up in the
memory does not wash the key out as the stream grows). `memory` is infini, local or xl.
"""

from infini_jax import config as configlib
from infini_jax import evaluate

TRAIN_LEN = 2048
SWEEP = (2048, 4096, 32768, 131072, 524288, 1048576)


def get_config(arg=None):
  arg = configlib.parse_arg(arg, recipe="tuned", memory="infini", rule="linear", steps=3000)
  if arg.recipe not in ("paper", "tuned"):
    raise ValueError(f"passkey recipe must be 'paper' or 'tuned'; got {arg.recipe!r}")
  if arg.memory not in ("infini", "local", "xl"):
    raise ValueError(f"passkey memory must be infini, local or xl; got {arg.memory!r}")
  tuned = dict(token_shift=8, memory_scale=arg.memory == "infini") if arg.recipe == "tuned" else {}
  c = configlib.defaults("tiny", memory=arg.memory, rule=arg.rule, d_model=128, num_heads=4,
                         num_kv_heads=4, head_dim=32, mlp_dim=256, segment_len=128, **tuned)
  c.seq_len = TRAIN_LEN  # 16 segments: the prompt fills the window (passkey_length 0)
  c.batch_size = 8
  c.data.update(name="passkey", passkey_length=0, passkey_position="random",
                passkey_examples=8 * arg.steps)  # every training prompt is new
  c.optimizer.update(lr=3e-3, warmup_steps=100, weight_decay=0.0)
  c.train.update(steps=arg.steps, log_every=25, eval_every=500, checkpoint_every=100)
  # The held-out loss is over whole prompts, mostly filler: retrieval is what is measured here.
  c.evals.perplexity.update(max_documents=16, max_tokens=0, chunk_len=TRAIN_LEN)
  # During training: retrieval at the training length and 8 times beyond, on 16 prompts each.
  c.evals.passkey_train = evaluate.settings(
      "passkey", lengths=(TRAIN_LEN, 8 * TRAIN_LEN), positions="random", samples=16,
      batch_size=16, during_training=True, progress=False)
  c.evals.passkey_train.kind = "passkey"
  # eval.py: the sweep to 1M tokens, key at start, middle and end, 20 prompts per cell.
  c.evals.passkey = evaluate.settings("passkey", lengths=SWEEP, samples=20, batch_size=20,
                                      chunk_segments=64)
  c.evals.gates = evaluate.settings("gates")
  return c
