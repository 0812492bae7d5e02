"""Passkey retrieval far beyond the training length, at laptop scale (the paper's Table 3, shrunk).

A 2-layer byte-level model (d 128, segment 128) trains on passkey prompts, the key at a random
place, first of 512 tokens, then of 4K starting from there (a length curriculum: in a long prompt
the key's share of the memory is too small for retrieval to be found at all), then streams
prompts of 2K ... 1M tokens with the key at the start, middle and end. About an hour of training
on one CPU core; experiments/passkey.sh runs every variant, docs/RESULTS.md has the figures.
The best recipe found (100% of whole keys at 2K and 4K, the answer opening a segment or
inside one, in four seeds of four; 90-100% at every length to 1M in two of them; the 4K stage
with jitter=127, see `jitter` below, and the gates at the base learning rate):

  python train.py --config=configs/passkey.py:write_gate=true,train_len=512,steps=1500 \
      --workdir=runs/pk/gated_512
  python train.py --config=configs/passkey.py:write_gate=true,jitter=127,train_len=4096,steps=700 \
      --workdir=runs/pk/gated_4k --config.init_from=runs/pk/gated_512/checkpoints \
      --config.optimizer.lr=1e-3 --config.optimizer.gate_lr_mult=1
  python eval.py --config=configs/passkey.py:write_gate=true,train_len=4096 \
      --workdir=runs/pk/gated_4k                                 # the sweep to 1M
  python train.py --config=configs/passkey.py:memory=xl --workdir=runs/pk/xl    # local, xl

`recipe`: "paper" is Infini-attention as published. "tuned" (the default here) adds two options
beyond the paper, each a model setting whose default stays the paper's: model.token_shift.size=8
(a key written to memory carries the 8 tokens before it: the context "pass key is" that the
question repeats) and model.infini.memory_scale (a learned scale on q and k before σ, so that
filler piling up in the memory does not wash the key out as the stream grows). `write_gate=true`
adds model.infini.write_gate (a learned strength of each token's memory write, so filler need
not be written) to either recipe. `answer_weight` (default 1) is the training loss's weight on
the answer's digits, 5 of the 512-4K tokens of a prompt. `jitter=127` makes each training
prompt up to 127 tokens shorter than the window, so that the answer lands at any offset of its
segment: without it the answer always ends the window's last segment, and a prompt whose question
ends a segment (the sweep's 2^k-token prompts) puts the answer where training never did. `memory`
is infini, local or xl. `filler=books` cuts each prompt's filler from public-domain books
(`infini_jax.data.books`, disjoint train and test books) instead of repeating five sentences;
experiments/books_passkey.py sweeps such prompts on the held-out book.
`rule=deltanet` (memory.py) replaces memory_scale in the tuned recipe.
"""

from infini_jax import config as configlib
from infini_jax import evaluate

SWEEP = (2048, 4096, 32768)
SWEEP_LONG = (131072, 524288, 1048576)
SEGMENT = 128
BOOKS = "data/books"  # python -m infini_jax.data.books (its docstring says how to fetch them)


def mid(lengths: tuple[int, ...]) -> tuple[int, ...]:
  """The same lengths less half a segment. A 2^k-token prompt (with BOS, 2^k + 1 tokens) ends its
  question on a segment's last token, so the answer opens the next segment and the question is
  in memory only; these put the answer in the middle of the question's segment."""
  return tuple(n - SEGMENT // 2 for n in lengths)


SWEEP_MID, SWEEP_LONG_MID = mid(SWEEP), mid(SWEEP_LONG)


def get_config(arg=None):
  arg = configlib.parse_arg(arg, runlocal=False, recipe="tuned", memory="infini", rule="linear",
                            steps=1500, train_len=2048, write_gate=False, answer_weight=1.0,
                            jitter=0, filler="repeat")
  if arg.runlocal:  # already laptop-sized: runlocal is a one-minute smoke run of the same setup
    arg.update(steps=20, train_len=512)
  if arg.recipe not in ("paper", "tuned"):
    raise ValueError(f"passkey recipe must be 'paper' or 'tuned'; got {arg.recipe!r}")
  if arg.filler not in ("repeat", "books"):
    raise ValueError(f"passkey filler must be 'repeat' or 'books'; got {arg.filler!r}")
  if arg.memory not in ("infini", "local", "xl"):
    raise ValueError(f"passkey memory must be infini, local or xl; got {arg.memory!r}")
  # memory_scale sharpens σ; deltanet's unit-length features need no scale (and refuse one).
  scaled = arg.memory == "infini" and arg.rule != "deltanet"
  tuned = arg.recipe == "tuned"
  c = configlib.defaults(
      "tiny", memory=arg.memory,
      shape=dict(d_model=128, num_heads=4, num_kv_heads=4, head_dim=32, mlp_dim=256,
                 segment_len=SEGMENT),
      infini=dict(rule=arg.rule, memory_scale=tuned and scaled, write_gate=arg.write_gate),
      token_shift=dict(size=8 if tuned else 0))
  c.seq_len = arg.train_len  # the prompt fills the window (passkey_length 0)
  c.batch_size = max(8, 16384 // arg.train_len)  # 16K tokens a step: more prompts when short
  c.data.update(name="passkey", passkey_length=0, passkey_position="random",
                passkey_examples=c.batch_size * arg.steps, passkey_seed=0,  # each prompt new
                answer_weight=arg.answer_weight, passkey_jitter=arg.jitter)
  if arg.filler == "books":  # training filler from the train books, the sweep's from the test book
    c.data.update(passkey_filler="text", passkey_filler_glob=BOOKS)
  c.optimizer.update(lr=3e-3, warmup_steps=100, weight_decay=0.0)
  c.train.update(steps=arg.steps, log_every=25, eval_every=250, checkpoint_every=100)
  # The held-out loss is over whole prompts, mostly filler: retrieval is what is measured here.
  c.evals.perplexity.update(max_documents=16, max_tokens=0, chunk_len=arg.train_len)
  # During training: retrieval at the training length and 8 times beyond, on 16 prompts each,
  # with the answer opening a segment (2^k) and in the middle of one (2^k less half a segment).
  lengths = (arg.train_len, 8 * arg.train_len)
  c.evals.passkey_train = evaluate.settings(
      "passkey", lengths=lengths + mid(lengths), positions="random", samples=16, batch_size=16,
      during_training=True, progress=False)
  c.evals.passkey_train.kind = "passkey"
  if arg.filler == "books":  # the held-out validation book: the test book is the sweep's
    c.evals.passkey_train.split = "validation"
  # eval.py: the sweep to 1M tokens, key at start, middle and end: 20 prompts per cell to 32K,
  # 10 beyond (52M tokens streamed, about 7 minutes on one core).
  c.evals.passkey = evaluate.settings("passkey", lengths=SWEEP, samples=20, batch_size=20,
                                      chunk_segments=64)
  c.evals.passkey_mid = evaluate.settings("passkey", lengths=SWEEP_MID, samples=20,
                                          batch_size=20, chunk_segments=64)
  c.evals.passkey_mid.kind = "passkey"
  # Local and XL see 128 / 256 tokens: beyond 32K they can only guess.
  if arg.memory == "infini" and not arg.runlocal:
    c.evals.passkey_long = evaluate.settings("passkey", lengths=SWEEP_LONG, samples=10,
                                             batch_size=10, chunk_segments=64)
    c.evals.passkey_long.kind = "passkey"
    c.evals.passkey_long_mid = evaluate.settings("passkey", lengths=SWEEP_LONG_MID, samples=10,
                                                 batch_size=10, chunk_segments=64)
    c.evals.passkey_long_mid.kind = "passkey"
  c.evals.gates = evaluate.settings("gates")
  if arg.runlocal:
    c.optimizer.warmup_steps = 5  # within the smoke run's 20 steps
    c.evals.passkey.update(lengths=(2048,), samples=2, batch_size=2)
    c.evals.passkey_mid.update(lengths=mid((2048,)), samples=2, batch_size=2)
  return c
