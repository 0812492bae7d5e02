"""Passkey retrieval with a 1B model (the paper's Table 3): continual pre-training, then fine-tuning.

The paper turns a 1B LLM's attention into Infini-attention and continues pre-training on 4K-token
inputs (segment 2K, 30K steps, batch 64, lr 1e-4), then fine-tunes 400 steps on 5K-token passkey
inputs, and tests at 32K ... 1M tokens with the key at the start, middle and end.

  # 1. pre-training data: any folder of text (PG19 books, a web crawl shard, ...)
  python train.py --config=configs/passkey_1b.py:stage=pretrain --workdir=runs/pk1b_pre \
      --config.data.text_glob='/data/corpus/*.txt' --config.data.tokenizer=/data/tok.model \
      --config.init_from=/ckpt/llama-3.2-1b-infini   # written by python -m infini_jax.convert
  # 2. passkey fine-tuning, starting from stage 1's last checkpoint
  python train.py --config=configs/passkey_1b.py:stage=finetune --workdir=runs/pk1b_ft \
      --config.init_from=runs/pk1b_pre/checkpoints --config.data.tokenizer=/data/tok.model
  # 3. passkey retrieval at 32K ... 1M tokens (the paper's Table 3)
  python eval.py --config=configs/passkey_1b.py:stage=finetune --workdir=runs/pk1b_ft \
      --config.data.tokenizer=/data/tok.model
`runlocal` shrinks both stages to the tiny model, byte tokens and embedded data.
"""

from infini_jax import config as configlib
from infini_jax import evaluate


def get_config(arg=None):
  arg = configlib.parse_arg(arg, runlocal=False, stage="pretrain", rule="delta")
  if arg.stage not in ("pretrain", "finetune"):
    raise ValueError(f"passkey_1b stage must be 'pretrain' or 'finetune'; got {arg.stage!r}")
  c = configlib.defaults("tiny" if arg.runlocal else "1b", infini=dict(rule=arg.rule))
  T = c.model.shape.segment_len
  if arg.stage == "pretrain":
    c.seq_len = 2 * T  # 4K tokens, two segments of 2K
    c.data.update(name="text_files", text_glob="", tokenizer="")
    c.optimizer.update(lr=1e-4, warmup_steps=1000, weight_decay=0.0)
    c.train.update(steps=30_000, log_every=50, eval_every=2000, checkpoint_every=1000)
  else:
    c.seq_len = 3 * T  # 5K-token passkey prompts padded into three segments
    c.data.update(name="passkey", passkey_length=5 * 1024, passkey_position="random",
                  passkey_examples=64 * 400, tokenizer="")
    c.optimizer.update(lr=1e-4, warmup_steps=20, weight_decay=0.0)
    c.train.update(steps=400, log_every=10, eval_every=400, checkpoint_every=100)
  c.batch_size = 64
  # v5e-16 (v5e:4x4): 1.24e9 parameters with AdamW are 14.8 GB, more than a 16 GiB chip holds
  # beside its activations unless split: FSDP over all 16 chips, four sequences each.
  c.mesh.update(data=1, fsdp=-1, tensor=1)
  c.evals.perplexity.update(max_documents=8, max_tokens=32768, chunk_len=4 * T)
  c.evals.gates = evaluate.settings("gates")
  # The paper's sweep (32K ... 1M tokens x start/middle/end), run by eval.py only.
  c.evals.passkey = evaluate.settings("passkey", samples=8, batch_size=8, chunk_segments=4)
  if arg.runlocal:
    c.batch_size = 4
    c.data.update(tokenizer="byte", name="python_code" if arg.stage == "pretrain" else "passkey",
                  passkey_length=3 * T - 8, passkey_examples=256)
    c.train.update(steps=20, log_every=5, eval_every=20, checkpoint_every=10)
    c.optimizer.warmup_steps = 5
    c.evals.perplexity.update(max_documents=2, max_tokens=1024, chunk_len=4 * T)
    c.evals.passkey.update(samples=2, batch_size=2, chunk_segments=32)  # still to 1M tokens
  return c
