"""Passkey retrieval in a haystack of real text, fine-tuned from the book LM: the filler is book
text, not five repeated sentences, so a model cannot learn to skip one known filler. At its
150 steps this learned no retrieval; the passkey recipe trained from scratch on book filler,
configs/passkey.py:filler=books, does (docs/RESULTS.md section 4).

Training prompts take their filler from the train books of `infini_jax.data.books` (Alice in
Wonderland, the LoC workshop proceedings), the sweep's from the held-out test book (Paradise
Lost): `data.passkey_filler="text"` with `data.passkey_filler_glob` (infini_jax/data/passkey.py).
The recipe starts from the books LM of configs/books_lm.py (the same model, `recipe=best`), as the
paper fine-tunes a pretrained LM, with the passkey recipe's jitter, the key at a random place of
prompts of `train_len` tokens. `write_gate=true` adds the passkey recipe's write gate (Infini
only; `init_from` starts it fresh, as the LM has none):

  python train.py --config=configs/books_lm.py:memory=infini,recipe=best --workdir=runs/bk_lm
  python train.py --config=configs/books_passkey.py:memory=infini --workdir=runs/bk_pk \
      --config.init_from=runs/bk_lm/checkpoints
  python -m experiments.books_passkey --config=configs/books_passkey.py:memory=infini \
      --workdir=runs/bk_pk --lengths=4096,32768,131072,1048576 --samples=10

`memory` is infini, xl or local (controls). `steps` default 150, `train_len` 512 (8 segments of
64), `answer_weight` 8. `runlocal`: a 10-step smoke run on 256-token prompts.
"""

from configs import books_lm
from infini_jax import evaluate

MEMORIES = ("infini", "xl", "local")


def get_config(arg=None):
  from infini_jax import config as configlib
  arg = configlib.parse_arg(arg, runlocal=False, memory="infini", steps=150, train_len=512,
                            answer_weight=8.0, jitter=63, write_gate=False,
                            text_glob=books_lm.TEXT_GLOB, tokenizer=books_lm.TOKENIZER)
  if arg.memory not in MEMORIES:
    raise ValueError(f"memory={arg.memory}: use one of {MEMORIES}")
  if arg.runlocal:
    arg.update(steps=10, train_len=256)
    if arg.tokenizer == books_lm.TOKENIZER:  # a smoke run needs no trained vocabulary
      arg.tokenizer = "byte"
  c = books_lm.get_config(f"memory={arg.memory},recipe=best,steps={arg.steps},"
                          f"text_glob={arg.text_glob},tokenizer={arg.tokenizer}")
  if arg.memory == "infini":
    c.model.infini.write_gate = arg.write_gate
  c.seq_len = arg.train_len  # the prompt fills the window (passkey_length 0)
  c.batch_size = max(4, books_lm.TOKENS_PER_STEP // arg.train_len)
  c.data.update(name="passkey", passkey_length=0, passkey_position="random",
                passkey_examples=c.batch_size * arg.steps, passkey_seed=0,
                answer_weight=arg.answer_weight, passkey_jitter=arg.jitter,
                passkey_eval_examples=16)
  c.data.passkey_filler = "text"
  c.data.passkey_filler_glob = arg.text_glob
  c.optimizer.update(lr=1e-3, warmup_steps=20, weight_decay=0.0)
  c.train.update(steps=arg.steps, log_every=25, eval_every=0, checkpoint_every=50)
  # During training: only the loss (the sweep is experiments/books_passkey.py, held-out book).
  c.evals = type(c.evals)()
  c.evals.passkey = evaluate.settings("passkey", lengths=(arg.train_len,), samples=4,
                                      batch_size=4)
  if arg.runlocal:
    c.optimizer.warmup_steps = 3
  return c
