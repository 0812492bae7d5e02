"""Long-context language modelling on PG19, the paper's Table 2 setup.

Model: 12 layers, 8 heads of 128, FFN 4096, segment 2048, training length 32768 (16 segments),
Adafactor lr 0.01 with 1000 warm-up steps then cosine decay, batch 64 (Munkhdalai et al. 2024, 4.1).

Data: the TFDS catalog's pg19, prepared once as array_record on a machine with internet access and
TensorFlow (reading it afterwards needs neither):
  pip install tensorflow-cpu
  tfds build pg19 --data_dir=data/tfds --file_format=array_record
and a 32K SentencePiece vocabulary trained on it:
  python -m infini_jax.data.tokenizer train --dataset=pg19 --data_dir=data/tfds \
      --vocab_size=32000 --out=data/pg19_32k.model

  python train.py --config=configs/pg19.py:memory=infini,rule=delta --workdir=runs/pg19_delta
  python train.py --config=configs/pg19.py:runlocal,memory=local --workdir=runs/pg19_local
`memory` is one of infini (with rule=linear|delta|deltanet), local, full, xl, memorizing, compressive, rmt.
`runlocal` swaps in the embedded python_code corpus, byte tokens and the demo-sized model.
"""

from infini_jax import config as configlib
from infini_jax import evaluate


# The baselines' memory sizes, at the paper's scale (Table 1 / Table 2 footprints): Memorizing
# Transformers' 65K-entry kNN store, a Compressive Transformer with as many compressed slots as a
# segment (rate 4), RMT with 100 memory tokens.
# Each memory's section of the model config (model.memorizing, ...).
BASELINES = dict(memorizing=dict(memory_size=65536, topk=32),
                 compressive=dict(memory_size=2048, compress_rate=4),
                 rmt=dict(memory_tokens=100))
# ... and scaled to runlocal's segment of 128.
BASELINES_LOCAL = dict(memorizing=dict(memory_size=1024, topk=32),
                       compressive=dict(memory_size=128, compress_rate=4),
                       rmt=dict(memory_tokens=16))


def get_config(arg=None):
  arg = configlib.parse_arg(arg, runlocal=False, memory="infini", rule="linear")
  if arg.runlocal:
    c = configlib.defaults("demo", memory=arg.memory, infini=dict(rule=arg.rule),
                           **{k: v for k, v in BASELINES_LOCAL.items() if k == arg.memory})
    c.seq_len = 4 * c.model.shape.segment_len
    if arg.memory == "full":
      c.model.shape.segment_len = c.seq_len  # one segment: ordinary causal attention
    c.batch_size = 4
    c.optimizer.name = "adafactor"
    c.optimizer.lr = 1e-2
    c.optimizer.warmup_steps = 20
    c.train.update(steps=100, log_every=10, eval_every=100, checkpoint_every=50)
    c.evals.perplexity.update(max_documents=4, max_tokens=4096, chunk_len=512)
    return c
  c = configlib.defaults("paper_lm", memory=arg.memory, infini=dict(rule=arg.rule),
                         **{k: v for k, v in BASELINES.items() if k == arg.memory})
  c.model.dtype = "bfloat16"
  c.seq_len = 32768
  if arg.memory == "full":
    c.model.shape.segment_len = c.seq_len  # one segment of 32K: the quadratic upper bound
  c.batch_size = 64
  # The paper's slice, v5e-64 (v5e:8x8), one 32K sequence per chip (make aot: the compiled step's
  # per-chip need, in README.md). Parameters and optimizer state split over half the slice (fsdp
  # 32), the two halves data parallel. Why not fsdp over all 64: libtpu lowers a reduce-scatter
  # over every chip of a slice of 16 chips or more as an all-reduce of the whole array and a
  # slice, so each layer's gradient was all-reduced at full size (tests/test_aot.py); over a part
  # of the slice it stays a reduce-scatter, and the data axis then all-reduces 1/32 shards.
  c.mesh.update(data=2, fsdp=-1, tensor=1)
  c.data.update(name="pg19", tokenizer="data/pg19_32k.model")
  c.optimizer.update(name="adafactor", lr=1e-2, warmup_steps=1000, weight_decay=0.0)
  c.train.update(steps=100_000, log_every=100, eval_every=5000, checkpoint_every=1000,
                 keep_checkpoints=3)
  c.evals.perplexity.update(split="validation", max_documents=50, max_tokens=0, chunk_len=32768,
                            batch_size=8)
  c.evals.gates = evaluate.settings("gates")
  return c
