"""The experiment config's schema, argument parsing and validation.

Every config file starts from `defaults()`, so all experiments share one schema and an override of
a key that does not exist is an error (ml_collections refuses it). `validate` checks the settings
against each other before any work starts.
"""

from __future__ import annotations

import math

import ml_collections
from etils import epath

from configs import models
from infini_jax import evaluate
from infini_jax.evaluate import REGISTRY as EVALUATORS
from infini_jax import sharding as sh
from infini_jax.data import pipeline
from infini_jax.data.tokenizer import get_tokenizer
from infini_jax.model import ModelConfig
from infini_jax.optim import OPTIMIZERS

DATASETS = ("python_code", "text_files", "passkey", "pg19", "booksum")


def defaults(model_name: str = "tiny", **model_changes) -> ml_collections.ConfigDict:
  """The schema with the preset `model_name` changed by `model_changes` (configs/models.get's:
  `defaults("tiny", memory="xl", shape=dict(segment_len=32))`)."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.model_name = model_name
  c.model = models.get(model_name, **model_changes)
  c.seq_len = 4 * c.model.shape.segment_len  # training length: whole segments
  c.batch_size = 8  # global, across all processes

  c.data = ml_collections.ConfigDict(dict(
      name="python_code", subset="stdlib", data_dir="data/tfds", tokenizer="byte", text_glob="",
      train_split="train", eval_split="validation",
      passkey_length=1024, passkey_digits=5, passkey_position="random", passkey_examples=2000,
      passkey_jitter=0, passkey_eval_examples=100, passkey_seed=0,
      # The passkey's filler: "repeat" (the paper's sentences) or "text" (passages of the files
      # passkey_filler_glob names, infini_jax/data/passkey.py).
      passkey_filler="repeat", passkey_filler_glob="",
      # BookSum (infini_jax/data/booksum.py): the records' field names ("" for the public
      # releases' own), synthetic books instead of the download, the loss on the summary alone.
      booksum_text_field="", booksum_summary_field="", booksum_synthetic=0,
      booksum_summary_only=True,
      # Epochs of training windows: None repeats them for as long as the run lasts.
      num_epochs=ml_collections.config_dict.placeholder(int),
      # The order of the training windows: -1 follows `seed`; a fixed value keeps the data order
      # while `seed` varies the initialisation alone (and the other way round).
      shuffle_seed=-1,
      # The training loss's weight on the passkey answer's tokens (every other target weighs 1):
      # the answer is a handful of tokens in thousands, the part retrieval is learned from.
      answer_weight=1.0))

  c.optimizer = ml_collections.ConfigDict(dict(
      name="adamw", lr=3e-3, min_lr_ratio=0.1, warmup_steps=100, weight_decay=0.1, b1=0.9,
      b2=0.95, eps=1e-8, clip_norm=1.0, grad_accum=1, gate_lr_mult=10.0))

  c.train = ml_collections.ConfigDict(dict(
      steps=1000, log_every=20, eval_every=500, checkpoint_every=200, keep_checkpoints=2,
      peak_flops=0.0))  # peak_flops 0: measure the XLA float32 matmul peak at start (for MFU)

  # Evaluators run periodically and by eval.py: name -> settings (see infini_jax/evaluate.py).
  c.evals = ml_collections.ConfigDict()
  c.evals.perplexity = evaluate.settings(
      "perplexity", split="validation", max_documents=16, max_tokens=16384, chunk_len=2048,
      batch_size=4)

  # Mesh axis sizes (-1: the remaining devices) and the logical-axis -> mesh-axis rules.
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
  c.sharding_rules = sh.DEFAULT_RULES
  # Continual pre-training: a fresh run starts from the parameters of this checkpoints directory
  # (python -m infini_jax.convert's --out, or a run's WORKDIR/checkpoints). Resuming wins over it.
  c.init_from = ""
  return c


def parse_arg(arg: str | None, **defaults_) -> ml_collections.ConfigDict:
  """'runlocal,memory=xl' -> ConfigDict(runlocal=True, memory='xl') over `defaults_`.

  A bare name sets a boolean; key=value takes the default's type; a dotted key sets a key of a
  nested default ('shape.segment_len=32'). Unknown keys are errors.
  """
  out = ml_collections.ConfigDict(defaults_)
  for item in filter(None, (arg or "").split(",")):
    key, sep, value = item.partition("=")
    *parents, leaf = key.split(".")
    node = out
    for part in parents:
      node = node.get(part) if isinstance(node, ml_collections.ConfigDict) else None
    if (not isinstance(node, ml_collections.ConfigDict) or leaf not in node
        or isinstance(node[leaf], ml_collections.ConfigDict)):
      raise ValueError(f"unknown config argument {key!r}; this config takes {sorted(defaults_)}")
    default = node[leaf]
    if not sep:
      if not isinstance(default, bool):
        raise ValueError(f"config argument {key!r} needs a value: {key}=...")
      node[leaf] = True
    elif isinstance(default, bool):
      if value.lower() not in ("1", "true", "yes", "0", "false", "no"):
        raise ValueError(f"config argument {key}={value!r}: use true or false")
      node[leaf] = value.lower() in ("1", "true", "yes")
    else:
      node[leaf] = type(default)(value)
  return out


def model_config(config) -> ModelConfig:
  return ModelConfig.from_dict(config.model)


def validate(config, device_count: int | None = None, process_count: int = 1) -> ModelConfig:
  """Checks the settings against each other; returns the ModelConfig. Raises ValueError."""
  check_ranges(config)
  model = model_config(config)
  T = model.shape.segment_len
  if config.seq_len <= 0 or config.seq_len % T:
    raise ValueError(
        f"seq_len={config.seq_len} must be a positive multiple of model.shape.segment_len={T}; "
        f"e.g. --config.seq_len={4 * T}")
  if model.memory == "full" and T != config.seq_len:
    raise ValueError(
        f"memory=full attends over the whole training length: set model.shape.segment_len = "
        f"seq_len (--config.model.shape.segment_len={config.seq_len}); got {T}")
  if config.data.name not in DATASETS:
    raise ValueError(f"unknown data.name {config.data.name!r}; use one of {DATASETS}")
  if not config.data.tokenizer:
    raise ValueError("data.tokenizer is empty: set --config.data.tokenizer=byte or the path of a "
                     "SentencePiece .model (python -m infini_jax.data.tokenizer train ...)")
  vocab = get_tokenizer(config.data.tokenizer).vocab_size
  if vocab > model.shape.vocab_size:
    raise ValueError(f"the tokenizer has {vocab} ids but model.shape.vocab_size is "
                     f"{model.shape.vocab_size}; set --config.model.shape.vocab_size={vocab} or "
                     "more")
  if config.data.name == "text_files" and not config.data.text_glob:
    raise ValueError("data.text_glob is empty: point it at your corpus, e.g. "
                     "--config.data.text_glob='/data/books/*.txt'")
  if config.data.shuffle_seed < -1:
    raise ValueError(f"data.shuffle_seed={config.data.shuffle_seed}: use -1 (follow seed) or a "
                     "seed >= 0")
  pipeline.answer_tokens(config.data)  # raises on a data.answer_weight the dataset cannot use
  if config.init_from and not epath.Path(config.init_from).is_dir():
    raise ValueError(f"init_from={config.init_from} is not a directory: point it at the --out of "
                     "python -m infini_jax.convert or at a training run's WORKDIR/checkpoints")
  if config.optimizer.name not in OPTIMIZERS:
    raise ValueError(f"unknown optimizer.name {config.optimizer.name!r}; use one of {OPTIMIZERS}")
  accum = config.optimizer.grad_accum
  if accum < 1 or config.batch_size % (accum * process_count):
    raise ValueError(
        f"batch_size={config.batch_size} must divide into optimizer.grad_accum={accum} "
        f"micro-batches on each of {process_count} processes")
  for name, ev in config.evals.items():
    kind = ev.get("kind", name)
    if kind not in EVALUATORS:
      raise ValueError(f"unknown evaluator {name!r}; use one of {sorted(EVALUATORS)} "
                       "(or set its 'kind')")
  sh.check_rules(config.sharding_rules)
  if device_count is not None:
    data, fsdp, _ = sh.mesh_shape(config.mesh, device_count)
    if config.batch_size % (data * fsdp * accum):
      raise ValueError(
          f"batch_size={config.batch_size} does not divide across the data axes of the mesh "
          f"(data={data} x fsdp={fsdp}) times optimizer.grad_accum={accum}")
  return model


# --- Ranges: each number on its own, refused before any work with what to set instead. ---

def _refuse(key: str, value, want: str, example) -> None:
  raise ValueError(f"{key}={value!r} is out of range: it must be {want}; e.g. "
                   f"--config.{key}={example}")


def _finite(x) -> bool:
  return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def check_ranges(config) -> None:
  """Refuses a setting outside its range (a negative learning rate trains towards a diverging
  loss for as long as the run lasts): one ValueError naming the key, its range and an example."""
  train, opt = config.train, config.optimizer
  for key in ("steps", "log_every"):
    if not train[key] > 0:
      _refuse(f"train.{key}", train[key], "a positive integer", 100)
  for key in ("eval_every", "checkpoint_every"):
    if not train[key] >= 0:
      _refuse(f"train.{key}", train[key], ">= 0 (0 turns it off)", 100)
  if not train.keep_checkpoints >= 1:
    _refuse("train.keep_checkpoints", train.keep_checkpoints, ">= 1", 2)
  if not (_finite(train.peak_flops) and train.peak_flops >= 0):
    _refuse("train.peak_flops", train.peak_flops, "the job's peak FLOP/s, or 0 for the chip's "
            "published one (measured on CPU)", 2.8e11)
  if not config.batch_size > 0:
    _refuse("batch_size", config.batch_size, "a positive integer", 8)
  # lr 0 is allowed: a run that passes its initial parameters through unchanged.
  if not (_finite(opt.lr) and opt.lr >= 0):
    _refuse("optimizer.lr", opt.lr, "a finite number >= 0", 3e-3)
  if not (_finite(opt.weight_decay) and opt.weight_decay >= 0):
    _refuse("optimizer.weight_decay", opt.weight_decay, "a finite number >= 0", 0.1)
  if not 0 <= opt.warmup_steps <= train.steps:
    _refuse("optimizer.warmup_steps", opt.warmup_steps,
            f"between 0 and train.steps={train.steps}", min(100, train.steps // 10))
  if not (_finite(opt.min_lr_ratio) and 0 <= opt.min_lr_ratio <= 1):
    _refuse("optimizer.min_lr_ratio", opt.min_lr_ratio, "in [0, 1]", 0.1)
  for key, example in (("b1", 0.9), ("b2", 0.95)):
    if not (_finite(opt[key]) and 0 <= opt[key] < 1):
      _refuse(f"optimizer.{key}", opt[key], "in [0, 1)", example)
  if not (_finite(opt.eps) and opt.eps >= 0):
    _refuse("optimizer.eps", opt.eps, "a finite number >= 0", 1e-8)
  for key, example in (("clip_norm", 1.0), ("gate_lr_mult", 10.0)):
    if not (_finite(opt[key]) and opt[key] > 0):
      _refuse(f"optimizer.{key}", opt[key], "a finite number > 0", example)
  for name, ev in config.evals.items():
    for key in ("batch_size", "samples", "chunk_len", "chunk_segments", "max_documents"):
      if key in ev and not ev[key] > 0:
        _refuse(f"evals.{name}.{key}", ev[key], "a positive integer", 4)
    if "max_tokens" in ev and not ev.max_tokens >= 0:
      _refuse(f"evals.{name}.max_tokens", ev.max_tokens, ">= 0 (0: whole documents)", 8192)
