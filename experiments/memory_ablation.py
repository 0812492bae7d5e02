"""What a trained Infini model gets from its compressive memory: held-out perplexity with the
memory reads of some layers emptied.

  python -m experiments.memory_ablation --workdir=runs/python_lm/infini_linear/seed0 \
      --config=configs/python_lm.py:memory=infini
  python -m experiments.memory_ablation --config=configs/python_lm.py:decay,xl_cache,gate_init=-3 \
      --workdir=runs/python_lm/infini_linear_decay_xl_cache_gate_init_-3/seed0 --evaluator=perplexity_long

One row per setting: every memory read (the model as trained), each layer's reads emptied alone,
every layer's. An emptied read returns what an empty memory returns, 0, as in the first segment
of every stream the model trained on, and the gate mixes it in as usual: sigmoid(β)·0 +
(1 - sigmoid(β))·A_local. Shutting the gates instead (sigmoid(β) = 0) would also rescale the
local path by 1 / (1 - sigmoid(β)), which the layers after it never saw. A row measures how much
the trained model leans on what the layer's memory holds, not what a model trained without a
memory reaches (the `local` and `xl` runs say that).
"""

import sys
import time

import jax
import jax.numpy as jnp
from absl import app, flags, logging
from flax import nnx
from ml_collections import config_flags

from infini_jax import evaluate, report
from infini_jax.memories.common import Gate


class EmptyReads(Gate):
  """The Infini memory's gate, whose read is multiplied by `on` (1 as trained, 0 emptied), one
  flag per layer of the stack: a read of 0 is what an empty memory returns; the writes go on."""

  def __init__(self, gate: Gate, on: jax.Array):
    self.beta, self.additive, self.inner = gate.beta, gate.additive, gate
    self.on = nnx.Variable(on)

  def logit(self, q):
    return self.inner.logit(q)

  def __call__(self, a_mem, a_dot, q):
    return self.inner(a_mem * self.on[...], a_dot, q)


def empty_reads(model: nnx.Module, layers) -> None:
  """Makes the memory reads of `layers` return 0, in place (again: replaces the last setting)."""
  memory = model.stages[0].blocks.attn.memory  # memory=infini: one stage of stacked layers
  gate = memory.gate.inner if isinstance(memory.gate, EmptyReads) else memory.gate
  on = jnp.ones((model.cfg.shape.num_layers,), jnp.float32).at[jnp.asarray(layers, int)].set(0.0)
  memory.gate = EmptyReads(gate, on)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)
  config = _CONFIG.value
  if config.model.memory != "infini":
    sys.exit(f"memory_ablation: model.memory={config.model.memory!r} has no gated memory read; "
             "use an infini run")
  evaluators = evaluate.from_config(config)
  name = _EVALUATOR.value
  if not isinstance(evaluators.get(name), evaluate.Perplexity):
    perplexities = sorted(k for k, v in evaluators.items() if isinstance(v, evaluate.Perplexity))
    sys.exit(f"memory_ablation: --evaluator={name!r} is not a perplexity evaluator of the config; "
             f"it has {perplexities}")
  layers = range(config.model.shape.num_layers)
  print(f"{_WORKDIR.value}: {name} perplexity with memory reads emptied")
  settings = [("as trained", ())] + [(f"layer {i} emptied", (i,)) for i in layers]
  settings += [("every layer emptied", tuple(layers))] if len(layers) > 1 else []
  model, step = report.load_model(config, _WORKDIR.value)  # read once; only the reads change
  rows = None
  for label, off in settings:
    empty_reads(model, off)
    start = time.perf_counter()
    metrics = dict(evaluators[name].run(model))
    keys = ["ppl"] + sorted((k for k in metrics if k.startswith("ppl_seg_")),
                            key=lambda k: int(k[8:].split("-")[0]))
    if rows is None:
      rows = [["memory reads", *(k.replace("ppl_", "") for k in keys)]]
    rows.append([label, *(f"{metrics[k]:.3f}" for k in keys)])
    print(f"  {label}: {metrics['ppl']:.3f} ({time.perf_counter() - start:.0f} s)", flush=True)
  print(report.format_table(f"{name}, step {step}", rows))


if __name__ == "__main__":
  # Flags only when run: the tests import empty_reads next to other modules that define --config.
  _CONFIG = config_flags.DEFINE_config_file("config", None, "The run's config file[:args].",
                                            lock_config=True)
  _WORKDIR = flags.DEFINE_string("workdir", None, "The training run's workdir.")
  _EVALUATOR = flags.DEFINE_string("evaluator", "perplexity", "The config's perplexity evaluator "
                                   "to run (a name in config.evals).")
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main)
