"""Long-context language modelling on public-domain books: Infini-attention against the paper's
baselines at equal size, segment and budget (the paper's Table 2 on PG19, at laptop scale).

Data (`infini_jax.data.books`): four Project Gutenberg etexts from the Brotli source package,
one split each by book: train Alice in Wonderland and the 1992 LoC workshop proceedings (222K
tokens), validation As You Like It (61K tokens), test Paradise Lost (220K tokens), in a
SentencePiece vocabulary of 1,024 pieces trained on the train books:

  pip download --no-deps --no-binary :all: brotli==1.1.0 -d data/books_src
  python -m infini_jax.data.books --source=data/books_src --out=data/books
  python -m infini_jax.data.tokenizer train --dataset=text_files --text_dir=data/books \
      --vocab_size=1024 --out=data/spm/books_1k.model
  python train.py --config=configs/books_lm.py:memory=infini,recipe=best --workdir=runs/bk_best
  make results-books        # every memory x seeds, then the table (experiments/books.sh)

Every memory trains the same 2-layer model (d 128, 4 heads of 32, FFN 256) on 2,048-token
windows in segments of 64, 8,192 tokens a step, for the same steps. Two streamed perplexities,
each overall and by segment position (the model state carried through the whole book):
  perplexity       the validation book, all 61K tokens (30 times the trained length);
  perplexity_long  the test book, all 220K tokens (107 times; segments 1 to 3,441).

`memory` is infini, xl, local or memorizing (Memorizing Transformers' kNN store holds 16
segments of keys, top 32, as in configs/python_lm.py). `recipe`:
  paper  Infini as published (linear rule, one gate per head started at 0); the baselines as
         published;
  best   the project's best LM recipe (docs/RESULTS.md section 2): Infini with memory_decay,
         xl_cache, gate_init -3, memory_add, token_shift 8 started at 0 and memory_scale; the
         baselines with the same token shift, so that every model gets the same input.
`steps` (default 150, the laptop budget of `make results-books`; at 400 every memory overfits
the four books, docs/RESULTS.md section 4), `segment`, `shuffle_seed` as in
configs/python_lm.py. `runlocal`: a 10-step smoke run that streams 4K tokens of each book.
"""

from infini_jax import config as configlib
from infini_jax import evaluate

SEGMENT = 64
TRAIN_LEN = 2048
TOKENS_PER_STEP = 8192
TEXT_GLOB = "data/books"
TOKENIZER = "data/spm/books_1k.model"
VOCAB = 1024
MEMORIES = ("infini", "xl", "local", "memorizing")
RECIPES = ("paper", "best")
# The project's best Infini LM recipe (docs/RESULTS.md section 2) and the input it shares.
SHIFT = dict(token_shift=dict(size=8, init=0.0))
BEST_INFINI = dict(infini=dict(decay=True, xl_cache=True, gate_init=-3.0, memory_add=True,
                               memory_scale=True), **SHIFT)


def recipe_options(memory: str, recipe: str, segment: int = SEGMENT) -> dict:
  """The model config's sections of a memory under a recipe (see the module docstring)."""
  if memory not in MEMORIES or recipe not in RECIPES:
    raise ValueError(f"memory={memory}, recipe={recipe}: use memory one of {MEMORIES} and recipe "
                     f"one of {RECIPES}")
  options = {}
  if memory == "memorizing":
    options["memorizing"] = dict(memory_size=16 * segment, topk=32)
  if recipe == "best":
    options.update(BEST_INFINI if memory == "infini" else SHIFT)
  return options


def get_config(arg=None):
  arg = configlib.parse_arg(arg, runlocal=False, memory="infini", recipe="paper", steps=150,
                            segment=SEGMENT, shuffle_seed=-1, text_glob=TEXT_GLOB,
                            tokenizer=TOKENIZER)
  if arg.segment < 1 or TRAIN_LEN % arg.segment:
    raise ValueError(f"segment={arg.segment}: use a segment that divides {TRAIN_LEN}")
  if arg.runlocal:
    arg.steps = 10
    if arg.tokenizer == TOKENIZER:  # a smoke run needs no trained vocabulary
      arg.tokenizer = "byte"
  c = configlib.defaults(
      "tiny", memory=arg.memory,
      shape=dict(num_layers=2, d_model=128, num_heads=4, num_kv_heads=4, head_dim=32, mlp_dim=256,
                 segment_len=arg.segment, vocab_size=VOCAB),
      **recipe_options(arg.memory, arg.recipe, arg.segment))
  c.data.update(name="text_files", text_glob=arg.text_glob, tokenizer=arg.tokenizer,
                shuffle_seed=arg.shuffle_seed)
  c.seq_len = TRAIN_LEN
  c.batch_size = TOKENS_PER_STEP // TRAIN_LEN
  c.optimizer.update(lr=3e-3, warmup_steps=30)
  c.train.update(steps=arg.steps, log_every=25, eval_every=arg.steps, checkpoint_every=50)
  # Whole books streamed through the memory: one document each, one row.
  c.evals.perplexity.update(split="validation", max_documents=1, max_tokens=0,
                            chunk_len=TRAIN_LEN, batch_size=1)
  c.evals.perplexity_long = evaluate.settings(
      "perplexity", split="test", max_documents=1, max_tokens=0, chunk_len=TRAIN_LEN,
      batch_size=1)
  c.evals.perplexity_long.kind = "perplexity"
  c.evals.gates = evaluate.settings("gates")  # sigmoid(β) per head: how much each reads memory
  if arg.runlocal:
    c.optimizer.warmup_steps = 3
    c.evals.perplexity.max_tokens = 4096
    c.evals.perplexity_long.max_tokens = 4096
  return c
