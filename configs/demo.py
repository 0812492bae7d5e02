"""The embedded default: a small Infini-Transformer on the Python standard library's sources.

Needs no download: the corpus is the running interpreter's own stdlib, byte-level tokens.
About 9 minutes on 2 CPU cores (8m41s measured, make train included); held-out perplexity
falls from 404 (untrained) to 4.55 per byte.

  python train.py --config=configs/demo.py --workdir=runs/demo
  python train.py --config=configs/demo.py:runlocal --workdir=runs/demo_quick   # a 1-minute run
  python eval.py --config=configs/demo.py --workdir=runs/demo   # perplexity, passkey, gates
"""

from infini_jax import config as configlib
from infini_jax import evaluate


def get_config(arg=None):
  arg = configlib.parse_arg(arg, runlocal=False, memory="infini", rule="linear")
  c = configlib.defaults("demo", memory=arg.memory, infini=dict(rule=arg.rule))
  c.seq_len = 4 * c.model.shape.segment_len  # 512 tokens: 4 segments of 128
  c.batch_size = 8
  c.optimizer.lr = 3e-3
  c.optimizer.warmup_steps = 50
  c.train.steps = 600
  c.train.log_every = 20
  c.train.eval_every = 300
  c.train.checkpoint_every = 100
  c.evals.perplexity.max_documents = 16
  c.evals.perplexity.max_tokens = 8192
  c.evals.perplexity.chunk_len = 1024
  c.evals.gates = evaluate.settings("gates")
  # Passkey retrieval runs in eval.py only (not in the periodic evals). A model trained on code
  # will not find the key; the paper's sweep, to 1M tokens, streams in a few minutes on a CPU:
  #   --config.evals.passkey.lengths='(32768,131072,262144,524288,1048576)'
  c.evals.passkey = evaluate.settings("passkey", lengths=(4096, 16384, 65536), samples=2,
                                      batch_size=2)
  if arg.runlocal:
    c.train.steps = 60
    c.train.eval_every = 60
    c.train.checkpoint_every = 30
    c.evals.perplexity.max_documents = 4
    c.evals.perplexity.max_tokens = 2048
  return c
