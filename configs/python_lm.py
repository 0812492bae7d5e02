"""Long-context language modelling on the embedded Python corpus: Infini-attention against the
paper's baselines at equal size, segment and budget (the paper's Table 2, at laptop scale).

Every memory trains the same 2-layer byte-level model (d 128, 4 heads of 32, FFN 256) on
2,048-token windows of the Python standard library's sources in segments of 64, for the same
number of steps and tokens. Two held-out perplexities, each overall and by segment position:
  perplexity       the first 2,048 tokens of 64 held-out files: the length trained on, as the
                   paper trains and evaluates at 32K;
  perplexity_long  whole files streamed to 16K tokens (256 segments), 8 times the trained length.
docs/RESULTS.md has the figures.

  python train.py --config=configs/python_lm.py:memory=infini,rule=delta --workdir=runs/lm_delta
  python train.py --config=configs/python_lm.py:memory=xl --workdir=runs/lm_xl --config.seed=1
  python -m experiments.compare runs/python_lm      # RUNS/NAME/seedN: the comparison table
`memory` is one of infini (rule=linear|delta|deltanet), local, full, xl, memorizing, compressive, rmt.
`write_gate=true` adds model.infini.write_gate (a learned strength of each token's memory write,
beyond the paper; configs/passkey.py measures it on retrieval). `decay=true` adds
model.infini.decay (a learned per-head fade of earlier segments' writes, beyond the paper), and
`xl_cache=true` model.infini.xl_cache (Infini's local attention also sees the previous segment,
as XL's). `gate_init=X` starts every head's gate logit β at X (model.infini.gate_init and
model.memorizing.gate_init; 0, an even mix, by default), `query_gate=true` makes the gate
sigmoid(β + q·w) per token (model.infini.query_gate, beyond the paper), and `memory_add=true`
adds the gated read to the local output instead of mixing the two (model.infini.memory_add,
beyond the paper).
`token_shift=S` gives every memory's input the embeddings of the S bytes before each token
(model.token_shift.size, beyond the paper), and `memory_scale=true` Infini a learned scale on the
q and k fed to σ (model.infini.memory_scale); configs/passkey.py's tuned recipe uses both.
`shift_init=X` starts the shift's weights at X (model.token_shift.init; 1 by default, 0 starts as
the model without the shift). `layers=N` trains
N layers instead of 2, for every memory alike. `train_len=N` trains on windows of N tokens (a
multiple of the segment that divides 8,192) at the same 8,192 tokens a step, so the same budget,
and measures `perplexity` on the first N tokens of each held-out file. `segment=N` runs every
memory on segments of N tokens instead of 64 (the baselines' memories scale with it; the
perplexities' segment positions are then of N tokens). `shuffle_seed=N` fixes the
order of the training windows (data.shuffle_seed; by default it follows --config.seed), so that
seeds vary the initialisation alone.
`full` attends over the whole training window (one segment of 2,048); it reads held-out files
in windows of 2,048 that do not see each other.
"""

from infini_jax import config as configlib
from infini_jax import evaluate

SEGMENT = 64
TRAIN_LEN = 2048
TOKENS_PER_STEP = 8192


def baselines(segment):
  """The baselines' memories scaled to the segment, each its section of the model config:
  Memorizing Transformers' kNN store holds 16 segments of keys, the Compressive Transformer keeps
  a segment's worth of compressed slots, RMT carries 8 memory tokens."""
  return dict(memorizing=dict(memory_size=16 * segment, topk=32),
              compressive=dict(memory_size=segment, compress_rate=4),
              rmt=dict(memory_tokens=8))


def get_config(arg=None):
  arg = configlib.parse_arg(arg, runlocal=False, memory="infini", rule="linear", steps=1500,
                            write_gate=False, decay=False, xl_cache=False, gate_init=0.0,
                            query_gate=False, memory_add=False, token_shift=0, shift_init=1.0,
                            memory_scale=False,
                            layers=2, train_len=TRAIN_LEN, segment=SEGMENT, shuffle_seed=-1)
  if arg.segment < 1 or arg.train_len % arg.segment or TOKENS_PER_STEP % arg.train_len:
    raise ValueError(f"train_len={arg.train_len}, segment={arg.segment}: use a segment that "
                     f"divides train_len, and a train_len that divides {TOKENS_PER_STEP} (the "
                     "tokens of one step), e.g. segment=32, 64 or 128 with train_len=2048")
  if arg.runlocal:  # already laptop-sized: runlocal is a one-minute smoke run of the same setup
    arg.steps = 20
  memory = baselines(arg.segment).get(arg.memory, {})  # the baseline's section, if any
  if arg.memory == "memorizing":
    memory = dict(memory, gate_init=arg.gate_init)  # its kNN layer's gate
  c = configlib.defaults(
      "tiny", memory=arg.memory,
      shape=dict(num_layers=arg.layers, d_model=128, num_heads=4, num_kv_heads=4, head_dim=32,
                 mlp_dim=256, segment_len=arg.segment),
      infini=dict(rule=arg.rule, write_gate=arg.write_gate, decay=arg.decay,
                  xl_cache=arg.xl_cache, gate_init=arg.gate_init, query_gate=arg.query_gate,
                  memory_add=arg.memory_add, memory_scale=arg.memory_scale),
      token_shift=dict(size=arg.token_shift, init=arg.shift_init),
      **({arg.memory: memory} if memory else {}))
  c.seq_len = arg.train_len
  c.data.shuffle_seed = arg.shuffle_seed
  if arg.memory == "full":
    c.model.shape.segment_len = arg.train_len  # one segment: causal attention over the whole window
  # Every window length gets the same tokens a step, so runs of any length share the budget.
  c.batch_size = TOKENS_PER_STEP // arg.train_len
  c.optimizer.update(lr=3e-3, warmup_steps=30)
  c.train.update(steps=arg.steps, log_every=25, eval_every=arg.steps, checkpoint_every=100)
  # The memory is trained on streams of train_len tokens: measured there first, then far beyond.
  c.evals.perplexity.update(split="validation", max_documents=64, max_tokens=arg.train_len,
                            chunk_len=arg.train_len, batch_size=8)
  c.evals.perplexity_long = evaluate.settings(
      "perplexity", split="validation", max_documents=16, max_tokens=16384,
      chunk_len=arg.train_len, batch_size=4)
  c.evals.perplexity_long.kind = "perplexity"
  c.evals.gates = evaluate.settings("gates")  # sigmoid(β) per head (the paper's Figure 3)
  if arg.runlocal:
    c.optimizer.warmup_steps = 5  # within the smoke run's 20 steps
    c.evals.perplexity.update(max_documents=2)
    c.evals.perplexity_long.update(max_documents=2, max_tokens=4096)
  return c
