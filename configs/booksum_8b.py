"""Book summarisation with an 8B model (the paper's Table 4): continual pre-training, fine-tuning.

The paper continues pre-training an 8B LLM with Infini-attention on 8K-token inputs for 30K steps,
fine-tunes it on BookSum at 32K and evaluates at 500K input tokens (ROUGE-1/2/L 40.0/8.8/17.9
with linear+delta). Fine-tuning weighs the summary alone (infini_jax/data/booksum.py); the
`summarise` evaluator streams each test book through the memory and samples its summary at
temperature 0.5, top-p 0.95, up to 1,024 tokens (infini_jax/summarise.py).

  python -m infini_jax.data.booksum --files='/data/booksum/chapters/*.jsonl' \
      --data_dir=/data/tfds                  # the release's train/val/test files, on disk
  python train.py --config=configs/booksum_8b.py:stage=pretrain --workdir=runs/bs8b_pre \
      --config.data.text_glob='/data/corpus/*.txt' --config.data.tokenizer=/data/tok.model \
      --config.init_from=/ckpt/llama-3-8b-infini   # written by python -m infini_jax.convert
  python train.py --config=configs/booksum_8b.py:stage=finetune --workdir=runs/bs8b_ft \
      --config.data.text_glob='/data/booksum/chapters/*.jsonl' --config.data.data_dir=/data/tfds \
      --config.data.tokenizer=/data/tok.model --config.init_from=runs/bs8b_pre/checkpoints
  python eval.py --config=configs/booksum_8b.py:stage=finetune --workdir=runs/bs8b_ft \
      --config.data.text_glob='/data/booksum/chapters/*.jsonl' --config.data.data_dir=/data/tfds \
      --config.data.tokenizer=/data/tok.model --only=summarise   # at 500K input tokens

`runlocal` runs the whole experiment on a laptop with the tiny byte-level model, on a made-up set
the project writes itself (stories of events among filler sentences, each summarised by its
events; `booksum.write_synthetic`, in data/booksum_synthetic): pre-training is language modelling
on the stories, fine-tuning weighs their summaries alone, and `summarise` scores test stories
longer than the fine-tuning window:

  python train.py --config=configs/booksum_8b.py:runlocal --workdir=runs/bs_pre
  python train.py --config=configs/booksum_8b.py:runlocal,stage=finetune --workdir=runs/bs_ft \
      --config.init_from=runs/bs_pre/checkpoints
  python eval.py --config=configs/booksum_8b.py:runlocal,stage=finetune --workdir=runs/bs_ft
"""

from infini_jax import config as configlib
from infini_jax import evaluate

PRETRAIN_STEPS = 30_000  # the paper's text: 30K steps of continual pre-training on 8K inputs
FINETUNE_STEPS = 2_000
SYNTHETIC_DIR = "data/booksum_synthetic"


def get_config(arg=None):
  arg = configlib.parse_arg(arg, runlocal=False, stage="pretrain", rule="delta")
  if arg.stage not in ("pretrain", "finetune"):
    raise ValueError(f"booksum_8b stage must be 'pretrain' or 'finetune'; got {arg.stage!r}")
  finetune = arg.stage == "finetune"
  c = configlib.defaults("tiny" if arg.runlocal else "8b", infini=dict(rule=arg.rule))
  T = c.model.shape.segment_len
  c.seq_len = (16 if finetune else 4) * T  # 8K, then 32K tokens
  c.batch_size = 32 if finetune else 64
  # Pre-training on v5e-256 (v5e:16x16: fsdp 64 x tensor 4) or 64 v5p chips (v5p:4x4x4: fsdp 16
  # x tensor 4); fine-tuning's 32 sequences of 32K on the 64 v5p chips likewise. Each mesh axis
  # must be a product of the torus's axes (4 x 4 x 4): tensor 2 cannot be laid on it.
  c.mesh.update(data=1, fsdp=-1, tensor=4)
  if finetune:
    c.data.update(name="booksum", text_glob="", tokenizer="")
  else:
    c.data.update(name="text_files", text_glob="", tokenizer="")
  c.optimizer.update(lr=1e-4, warmup_steps=50 if finetune else 500, weight_decay=0.0)
  steps = FINETUNE_STEPS if finetune else PRETRAIN_STEPS
  c.train.update(steps=steps, log_every=50, eval_every=steps // 10, checkpoint_every=500)
  c.evals.perplexity.update(max_documents=8, max_tokens=0, chunk_len=4 * T)
  c.evals.gates = evaluate.settings("gates")
  if finetune:  # eval.py only (during_training False): the paper's 500K-token inputs
    c.evals.summarise = evaluate.settings("summarise", max_input_tokens=500_000)
  if arg.runlocal:
    c.mesh.update(data=-1, fsdp=1, tensor=1)  # whatever devices there are, data parallel
    c.seq_len = (8 if finetune else 4) * T  # the test stories (~600 bytes) outgrow 512
    c.batch_size = 4
    # Both stages read the synthetic stories: pre-training on their whole text, fine-tuning on
    # the summaries alone.
    c.data.update(name="booksum", tokenizer="byte", text_glob=SYNTHETIC_DIR,
                  booksum_synthetic=400, booksum_summary_only=finetune)
    c.optimizer.update(lr=3e-3, warmup_steps=5)
    c.train.update(steps=40 if finetune else 60, log_every=10, eval_every=0, checkpoint_every=20)
    c.evals.perplexity.update(max_documents=4, max_tokens=0, chunk_len=4 * T)
    if finetune:
      c.evals.summarise.update(max_documents=4, max_new_tokens=160, max_input_tokens=0,
                               chunk_segments=4)
  return c
