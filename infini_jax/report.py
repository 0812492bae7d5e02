"""eval.py's work: restore a checkpoint's parameters, run the config's evaluators on them, and
write what each found to WORKDIR/eval/STEP/: NAME.json (metrics and table), NAME.png (plot).

The tables and plots are drawn here, never inside the evaluators, so that the trainer's periodic
evals stay cheap. One writer per evaluator class (`WRITERS`); each returns (table, figure).
"""

from __future__ import annotations

import json
import os
import re
import time
from typing import Any, Callable

import jax
import matplotlib

matplotlib.use("Agg")  # Files only: eval runs on machines without a display.
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from infini_jax import config as configlib  # noqa: E402
from infini_jax import evaluate  # noqa: E402
from infini_jax.checkpoint import Checkpointer  # noqa: E402
from infini_jax.data import pipeline  # noqa: E402
from infini_jax.model import InfiniTransformer  # noqa: E402
from infini_jax.model_config import nest  # noqa: E402


def load_model(config, workdir: str, step: int | None = None) -> tuple[InfiniTransformer, int]:
  """The model of `config` with the parameters of WORKDIR/checkpoints at `step` (default: the
  latest), on one device. -> (model, step)."""
  model_cfg = configlib.validate(config)
  directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
  if not os.path.isdir(directory):
    raise FileNotFoundError(
        f"no checkpoints in {directory}: point --workdir at the workdir of a training run, or "
        f"train first (python train.py --config=... --workdir={workdir})")
  _note_training_config(config, workdir)
  abstract = nnx.eval_shape(lambda: InfiniTransformer(model_cfg, rngs=nnx.Rngs(0)))
  graphdef, abstract_vars = nnx.split(abstract)
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  abstract_params = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
      nnx.to_pure_dict(abstract_vars))
  ckpt = Checkpointer(workdir, config.train.keep_checkpoints)
  try:
    params, step = ckpt.restore_params(abstract_params, step)
  finally:
    ckpt.close()
  return nnx.merge(graphdef, params), step


def evaluate_checkpoint(config, workdir: str, step: int | None = None,
                        only: tuple[str, ...] = ()) -> dict[str, dict]:
  """Runs every evaluator of `config` (or those named in `only`) on the checkpoint of `step`
  (default: the latest) in WORKDIR/checkpoints; writes the results to WORKDIR/eval/STEP/ and
  prints each table.

  Everything that can be checked without the checkpoint is checked first. Returns
  {evaluator name: {metric: value}}.
  """
  model_cfg = configlib.validate(config)
  if not config.evals:
    raise ValueError("the config has no evaluators (config.evals is empty): add perplexity, "
                     "passkey or gates entries to the evals of the config file")
  unknown = sorted(set(only) - set(config.evals))
  if unknown:
    raise ValueError(f"--only names evaluators the config does not have: {unknown}; it has "
                     f"{sorted(config.evals)}")
  evaluators = {k: v for k, v in evaluate.from_config(config).items() if not only or k in only}
  model, step = load_model(config, workdir, step)
  directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
  out_dir = os.path.join(workdir, "eval", str(step))
  os.makedirs(out_dir, exist_ok=True)
  print(f"evaluating the checkpoint of step {step} in {directory}: {config.model_name}, "
        f"memory={model_cfg.memory} rule={model_cfg.infini.rule}, segment "
        f"{model_cfg.shape.segment_len}",
        flush=True)
  # The embedded datasets are generated here, as the trainer does: a run with other data
  # settings (another passkey seed, a fresh data_dir) is evaluated without training first.
  pipeline.prepare_from_config(config.data, config.seq_len)
  results = {}
  for name, ev in evaluators.items():
    start = time.perf_counter()
    results[name] = dict(ev.run(model))
    table = write(name, ev, results[name], out_dir, step)
    print(f"\n{table}\n({time.perf_counter() - start:.1f} s)", flush=True)
  path = os.path.join(out_dir, "results.json")
  if only and os.path.exists(path):  # a partial run adds to what earlier runs measured
    with open(path) as f:
      results = {**json.load(f)["results"], **results}
  with open(path, "w") as f:
    json.dump(dict(step=step, checkpoint=directory, results=results), f, indent=2)
  print(f"\nwrote {out_dir}", flush=True)
  return results


def _note_training_config(config, workdir: str) -> None:
  """Prints the model settings that differ from the run's own config.json: a different rule or
  RoPE theta loads without any shape error and silently gives other numbers."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    return
  with open(path) as f:
    trained = json.load(f).get("model", {})
  if trained and "shape" not in trained:  # written before the model config had sections
    trained = nest(trained)
  current, trained = _dotted(config.model.to_dict()), _dotted(trained)
  for key in sorted(k for k in current if k in trained and trained[k] != current[k]):
    print(f"note: model.{key}={current[key]!r} here, {trained[key]!r} in training ({path})")


def _dotted(tree: dict, prefix: str = "") -> dict:
  """{"shape": {"d_model": 64}} -> {"shape.d_model": 64}."""
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(_dotted(value, f"{prefix}{key}."))
    else:
      out[prefix + key] = value
  return out


def write(name: str, evaluator: Any, metrics: dict[str, float], out_dir: str, step: int) -> str:
  """Writes out_dir/NAME.json and, where the evaluator has a plot, out_dir/NAME.png; returns the
  table."""
  writer = WRITERS.get(type(evaluator), _plain)
  table, figure = writer(name, evaluator, metrics)
  with open(os.path.join(out_dir, f"{name}.json"), "w") as f:
    json.dump(dict(evaluator=name, step=step, metrics=metrics, table=table), f, indent=2)
  if figure is not None:
    figure.savefig(os.path.join(out_dir, f"{name}.png"), dpi=120, bbox_inches="tight")
    plt.close(figure)
  return table


def format_table(title: str, rows: list[list[str]]) -> str:
  """A title, then rows of left-aligned columns; the first row is the header."""
  widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
  lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
  return "\n".join([title, lines[0], "-" * len(lines[0])] + lines[1:])


def _plain(name, evaluator, metrics):
  del evaluator
  rows = [["metric", "value"]] + [[k, f"{v:.4g}"] for k, v in metrics.items()]
  return format_table(name, rows), None


def perplexity_report(name: str, ev: evaluate.Perplexity, metrics: dict[str, float]):
  """Perplexity by context position (segments 1, 2, 3-4, ...): with a working memory, later
  segments are easier than the first."""
  buckets = [(k[len("ppl_seg_"):], v) for k, v in metrics.items() if k.startswith("ppl_seg_")]
  rows = [["segments", "ppl"]] + [[label, f"{v:.3f}"] for label, v in buckets]
  rows.append(["all", f"{metrics['ppl']:.3f}"])
  title = (f"{name}: perplexity by context position ({int(metrics['tokens']):,} tokens of "
           f"{ev.split!r}, segments of {ev.segment_len} tokens)")
  fig, ax = plt.subplots(figsize=(6.5, 3.5))
  ax.plot(range(len(buckets)), [v for _, v in buckets], "o-", label="tokens in these segments")
  ax.axhline(metrics["ppl"], ls="--", color="gray", label=f"all tokens: {metrics['ppl']:.3f}")
  ax.set_xticks(range(len(buckets)), [label for label, _ in buckets])
  ax.set_xlabel(f"context position (segment of the document, {ev.segment_len} tokens each)")
  ax.set_ylabel("perplexity")
  ax.set_title(f"{name}: perplexity by context position")
  ax.legend()
  return format_table(title, rows), fig


def passkey_report(name: str, ev: evaluate.Passkey, metrics: dict[str, float]):
  """The paper's Table 3 layout: a column per length, each cell the accuracy (%) at the key
  positions in order (start/middle/end); a heat map of the same."""
  labels = [evaluate.length_label(n) for n in ev.lengths]
  acc = np.array([[metrics[f"acc_{lab}_{p}"] for lab in labels] for p in ev.positions])
  digits = np.array([[metrics[f"digits_{lab}_{p}"] for lab in labels] for p in ev.positions])

  def cells(a):  # [positions, lengths] -> one "100/94/100" string per length
    return ["/".join(f"{100 * x:.0f}" for x in a[:, j]) for j in range(a.shape[1])]

  rows = [["", *labels], ["whole key", *cells(acc)], ["digits", *cells(digits)]]
  title = (f"{name}: passkey retrieval accuracy % ({'/'.join(ev.positions)}), {ev.samples} "
           f"prompts per cell; all cells: {100 * metrics['acc']:.1f}% whole key, "
           f"{100 * metrics['digits']:.1f}% digits")
  fig, ax = plt.subplots(figsize=(1.3 * len(labels) + 2, 0.6 * len(ev.positions) + 1.6))
  image = ax.imshow(100 * acc, cmap="viridis", vmin=0, vmax=100, aspect="auto")
  for (i, j), value in np.ndenumerate(acc):
    ax.text(j, i, f"{100 * value:.0f}%\n({100 * digits[i, j]:.0f}% digits)", ha="center",
            va="center", color="white" if value < 0.6 else "black", fontsize=8)
  ax.set_xticks(range(len(labels)), labels)
  ax.set_yticks(range(len(ev.positions)), ev.positions)
  ax.set_xlabel("prompt length (tokens)")
  ax.set_ylabel("key position")
  ax.set_title(f"{name}: whole key retrieved (%)")
  fig.colorbar(image, ax=ax, label="%")
  return format_table(title, rows), fig


def gates_report(name: str, ev: evaluate.Gates, metrics: dict[str, float]):
  """sigmoid(β) per layer and head, like the paper's Figure 3: near 0 a head reads only its
  local context, near 1 only the memory, in between it mixes both."""
  found = {tuple(map(int, m.groups())): v for k, v in metrics.items()
           if (m := re.fullmatch(r"gate/layer(\d+)/head(\d+)", k))}
  if not found:
    return f"{name}: the model has no memory (model.memory='local'), so no gates", None
  layers, heads = (max(i for i, _ in found) + 1), (max(j for _, j in found) + 1)
  g = np.zeros((layers, heads))
  for (i, j), v in found.items():
    g[i, j] = v
  rows = [["layer", *(f"h{j}" for j in range(heads))]]
  rows += [[str(i), *(f"{v:.2f}" for v in g[i])] for i in range(layers)]
  title = (f"{name}: sigmoid(β) per head (0 local only, 1 memory only): "
           f"{metrics['heads_local']:.0f} local (< {ev.low}), {metrics['heads_mixed']:.0f} mixed, "
           f"{metrics['heads_memory']:.0f} memory (> {ev.high}); mean {metrics['gate_mean']:.3f}")
  fig, ax = plt.subplots(figsize=(0.5 * heads + 2.5, 0.45 * layers + 1.5))
  image = ax.imshow(g, cmap="coolwarm", vmin=0, vmax=1, aspect="auto")
  if heads * layers <= 256:
    for (i, j), v in np.ndenumerate(g):
      ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7)
  ax.set_xticks(range(heads))
  ax.set_yticks(range(layers))
  ax.set_xlabel("head")
  ax.set_ylabel("layer")
  ax.set_title(f"{name}: gate sigmoid(β)")
  fig.colorbar(image, ax=ax, label="0 local context ... 1 memory")
  # model.infini.decay: γ per key/value head, how much of the memory each segment keeps.
  decays = {}
  for k, v in metrics.items():
    if m := re.fullmatch(r"decay/layer(\d+)/head\d+", k):
      decays.setdefault(m.group(1), []).append(f"{v:.3f}")
  text = format_table(title, rows)
  if decays:
    text += "\nmemory decay γ per key/value head: " + "; ".join(
        f"layer {i}: {' '.join(vals)}" for i, vals in decays.items())
  return text, fig


WRITERS: dict[type, Callable] = {
    evaluate.Perplexity: perplexity_report,
    evaluate.Passkey: passkey_report,
    evaluate.Gates: gates_report,
}
