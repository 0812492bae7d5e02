"""Book summarisation with an 8B model (the paper's Table 4): continual pre-training, fine-tuning.

The paper continues pre-training an 8B LLM with Infini-attention on 8K-token inputs, fine-tunes it
on BookSum at 32K and evaluates at 500K input tokens. Prepare BookSum as a folder of text files
(one book chapter plus its summary per file, the summary after the book text) and point
data.text_glob at it.

  python train.py --config=configs/booksum_8b.py:stage=pretrain --workdir=runs/bs8b_pre \
      --config.data.text_glob='/data/corpus/*.txt' --config.data.tokenizer=/data/tok.model \
      --config.init_from=/ckpt/llama-3-8b-infini   # written by python -m infini_jax.convert
  python train.py --config=configs/booksum_8b.py:stage=finetune --workdir=runs/bs8b_ft \
      --config.data.text_glob='/data/booksum/train/*.txt' --config.data.tokenizer=/data/tok.model \
      --config.init_from=runs/bs8b_pre/checkpoints
`runlocal` shrinks it to the tiny model on the embedded python_code corpus.
"""

from infini_jax import config as configlib
from infini_jax import evaluate


def get_config(arg=None):
  arg = configlib.parse_arg(arg, runlocal=False, stage="pretrain", rule="delta")
  if arg.stage not in ("pretrain", "finetune"):
    raise ValueError(f"booksum_8b stage must be 'pretrain' or 'finetune'; got {arg.stage!r}")
  c = configlib.defaults("tiny" if arg.runlocal else "8b", rule=arg.rule)
  T = c.model.segment_len
  c.seq_len = (4 if arg.stage == "pretrain" else 16) * T  # 8K, then 32K tokens
  c.batch_size = 64 if arg.stage == "pretrain" else 32
  c.data.update(name="text_files", text_glob="", tokenizer="")
  c.optimizer.update(lr=1e-4, warmup_steps=500 if arg.stage == "pretrain" else 50,
                     weight_decay=0.0)
  steps = 20_000 if arg.stage == "pretrain" else 2_000
  c.train.update(steps=steps, log_every=50, eval_every=steps // 10, checkpoint_every=500)
  c.evals.perplexity.update(max_documents=8, max_tokens=0, chunk_len=4 * T)
  c.evals.gates = evaluate.settings("gates")
  if arg.runlocal:
    c.seq_len = 4 * T
    c.batch_size = 4
    c.data.update(name="python_code", tokenizer="byte")
    c.train.update(steps=20, log_every=5, eval_every=20, checkpoint_every=10)
    c.optimizer.warmup_steps = 5
    c.evals.perplexity.update(max_documents=2, max_tokens=1024)
  return c
