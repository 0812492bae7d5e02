"""Imports a Hugging Face Llama-architecture checkpoint as an infini-jax checkpoint.

  python -m infini_jax.convert --from_hf=/ckpt/Llama-3.2-1B --out=/ckpt/llama-3.2-1b-infini \
      --preset=1b
  python -m infini_jax.convert --from_hf=DIR --out=OUT --preset=1b:infini.rule=delta --gate_init=-6
  python -m infini_jax.convert --from_hf=DIR --out=OUT --config=configs/passkey_1b.py
then train from it: `python train.py ... --config.init_from=OUT`, or evaluate it as it is:
`python eval.py --config=... --workdir=OUT`.

The paper's 1B and 8B results are continual pre-training: an existing LLM's attention becomes
Infini-attention (the same Q/K/V/O weights, new gates, memories starting empty) and training goes
on with long inputs. No download happens here: DIR is a folder on disk with config.json and
model.safetensors, or the shards listed in model.safetensors.index.json. Tensors are read one at
a time with the safetensors package (numpy; bfloat16 through ml_dtypes), so neither torch nor
transformers is needed. The model config (a preset, with overrides, or an experiment config's
model) must describe the checkpoint: config.json is checked against it field by field.

Output: OUT/checkpoints/0 (the parameters, in the layout a training run checkpoints them) and
OUT/config.json (the model config, as a run's workdir has it).

Axis legend: W vocabulary, D model dim, N query heads, K key/value heads, H head dim, F MLP dim.
Hugging Face's Linear weights are [out, in]; ours are [in, ...] with heads split out:
  model.embed_tokens.weight                [W, D]     -> embed [W, D]
  model.layers.i.input_layernorm.weight    [D]        -> blocks[i].attn_norm.scale
  model.layers.i.self_attn.q_proj.weight   [N*H, D]   -> blocks[i].attn.wq [D, N, H]
  model.layers.i.self_attn.k_proj.weight   [K*H, D]   -> blocks[i].attn.wk [D, K, H]
  model.layers.i.self_attn.v_proj.weight   [K*H, D]   -> blocks[i].attn.wv [D, K, H]
  model.layers.i.self_attn.o_proj.weight   [D, N*H]   -> blocks[i].attn.wo [N, H, D]
  model.layers.i.post_attention_layernorm  [D]        -> blocks[i].mlp_norm.scale
  model.layers.i.mlp.{gate,up}_proj.weight [F, D]     -> blocks[i].mlp.w_{gate,up} [D, F]
  model.layers.i.mlp.down_proj.weight      [D, F]     -> blocks[i].mlp.w_down [F, D]
  model.norm.weight                        [D]        -> final_norm.scale
  lm_head.weight                           [W, D]     -> unembed [D, W] (absent when tied)
RoPE needs no permutation: Hugging Face's Llama rotates halves (`rotate_half`: dim j pairs with
j + H/2), as attention.rope does; Meta's interleaved original weights were permuted into that
layout by Hugging Face's own conversion. tests/test_convert.py pins it against transformers.

The gates β are new parameters. Their start, --gate_init (default models.CONVERTED_GATE_INIT = -4,
sigmoid 0.018), keeps the pretrained model nearly intact at step 0 (each attention output is
scaled by 1 - 0.018, plus 0.018 of the memory read) while leaving the gate a gradient to learn
from: β = -100 gives sigmoid exactly 0 in float32 and the gate never moves; β = 0 halves every
pretrained attention output. README "Start from an existing LLM" has the measurement.
"""

from __future__ import annotations

import json
import math
import os
import sys
from typing import Callable

import jax
import ml_dtypes
import numpy as np
from absl import app, flags, logging
from flax import nnx
from ml_collections import config_flags
try:
  from safetensors import safe_open
except ImportError:  # a runtime requirement, but `pip install .` with --no-deps leaves it out
  raise ImportError("the converter reads Hugging Face checkpoints with the safetensors package: "
                    "pip install -r requirements.txt (or: pip install safetensors)") from None

from configs import models
from infini_jax import config as configlib
from infini_jax import memories
from infini_jax.checkpoint import Checkpointer
from infini_jax import migrate
from infini_jax.memories.common import MemoryParam
from infini_jax.model import InfiniTransformer, ModelConfig

NP_DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16}
FLOAT_DTYPES = ("F32", "BF16", "F16", "F64")  # safetensors dtype names a weight may have
# Buffers some transformers versions saved next to the weights; recomputed here, never read.
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)

# config.json key -> the model config's key (SECTION.KEY), checked one by one.
SHAPE_FIELDS = {
    "hidden_size": "shape.d_model", "num_hidden_layers": "shape.num_layers",
    "num_attention_heads": "shape.num_heads", "num_key_value_heads": "shape.num_kv_heads",
    "head_dim": "shape.head_dim", "intermediate_size": "shape.mlp_dim",
    "vocab_size": "shape.vocab_size", "tie_word_embeddings": "shape.tie_embeddings",
    "rope_theta": "rope.theta", "rms_norm_eps": "shape.norm_eps", "rope_scaling": "rope.scaling",
}
REQUIRED_KEYS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                 "vocab_size")
LLAMA3_FIELDS = {  # rope_scaling's settings when its type is llama3
    "factor": "rope.factor", "low_freq_factor": "rope.low_freq_factor",
    "high_freq_factor": "rope.high_freq_factor",
    "original_max_position_embeddings": "rope.original_max_len",
}


def read_hf_config(hf_dir: str) -> dict:
  """config.json as the values ModelConfig would need, keyed by config.json's names.

  Fills transformers' defaults for keys it omits, accepts both RoPE layouts (rope_theta and
  rope_scaling at the top, or transformers 5's rope_parameters) and refuses what is not Llama.
  """
  path = os.path.join(hf_dir, "config.json")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"no config.json in {hf_dir}: --from_hf must be a Hugging Face "
                            "model folder (config.json and *.safetensors)")
  with open(path) as f:
    raw = json.load(f)
  problems = []
  if raw.get("model_type") != "llama":
    problems.append(f"model_type is {raw.get('model_type')!r}, not 'llama'")
  if raw.get("hidden_act", "silu") != "silu":
    problems.append(f"hidden_act is {raw['hidden_act']!r}, not 'silu'")
  for key in ("attention_bias", "mlp_bias"):
    if raw.get(key):
      problems.append(f"{key} is true (this model has no biases)")
  absent = [k for k in REQUIRED_KEYS if k not in raw]
  if absent:
    problems.append(f"it lacks {', '.join(absent)}")
  rope = dict(raw.get("rope_parameters") or raw.get("rope_scaling") or {})
  rope_type = rope.get("rope_type", rope.get("type", "default"))
  if rope_type not in ("default", "llama3"):
    problems.append(f"rope type {rope_type!r} is not supported (default or llama3)")
  if rope_type == "llama3":  # transformers' fallback for the original context, as it reads it
    rope.setdefault("original_max_position_embeddings", raw.get("max_position_embeddings"))
    absent = [k for k in LLAMA3_FIELDS if rope.get(k) is None]
    if absent:
      problems.append(f"its llama3 rope_scaling lacks {', '.join(absent)}")
  if rope.get("partial_rotary_factor", raw.get("partial_rotary_factor", 1.0)) != 1.0:
    problems.append("partial_rotary_factor is not 1")
  if problems:
    raise ValueError(f"{path} is not a Llama-architecture model this converter can import: "
                     f"{'; '.join(problems)}")
  heads = raw["num_attention_heads"]
  hf = dict(
      hidden_size=raw["hidden_size"], num_hidden_layers=raw["num_hidden_layers"],
      num_attention_heads=heads, num_key_value_heads=raw.get("num_key_value_heads") or heads,
      head_dim=raw.get("head_dim") or raw["hidden_size"] // heads,
      intermediate_size=raw["intermediate_size"], vocab_size=raw["vocab_size"],
      tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
      rope_theta=float(rope.get("rope_theta", raw.get("rope_theta", 10_000.0))),
      rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
      rope_scaling="none" if rope_type == "default" else rope_type)
  if rope_type == "llama3":
    hf.update({key: rope[key] for key in LLAMA3_FIELDS})
  return hf


def check_config(hf: dict, cfg: ModelConfig, hf_dir: str) -> None:
  """Raises one ValueError naming every config.json field that the model config contradicts."""
  fields = dict(SHAPE_FIELDS, **(LLAMA3_FIELDS if hf["rope_scaling"] == "llama3" else {}))
  wrong = [f"{key}={hf[key]!r} but model.{field}={_value(cfg, field)!r}"
           for key, field in fields.items() if not _same(hf[key], _value(cfg, field))]
  if wrong:
    raise ValueError(f"the model config does not match {os.path.join(hf_dir, 'config.json')}: "
                     f"{'; '.join(wrong)}. Pick the preset of this checkpoint or override those "
                     "keys (--preset=NAME:section.key=value,...)")


def _value(cfg: ModelConfig, key: str):
  """The value of the model config's key SECTION.KEY."""
  section, name = key.split(".")
  return cfg.to_dict()[section][name]


def gate_init(cfg: ModelConfig) -> float:
  """Where the gates of the config's memory start: Infini's, or memorizing's kNN layer's."""
  return cfg.memorizing.gate_init if cfg.memory == "memorizing" else cfg.infini.gate_init


def _same(a, b) -> bool:
  if isinstance(a, float) or isinstance(b, float):
    return math.isclose(float(a), float(b), rel_tol=1e-9)
  return a == b


def tensor_map(cfg: ModelConfig) -> dict[str, tuple[tuple, tuple, Callable]]:
  """Hugging Face tensor name -> (our parameter path, its Hugging Face shape, layout change)."""
  s = cfg.shape
  W, D, N, K, H, F = s.vocab_size, s.d_model, s.num_heads, s.num_kv_heads, s.head_dim, s.mlp_dim
  same = lambda w: w  # noqa: E731
  out = {"model.embed_tokens.weight": (("embed",), (W, D), same),
         "model.norm.weight": (("final_norm", "scale"), (D,), same)}
  if not s.tie_embeddings:
    out["lm_head.weight"] = (("unembed",), (W, D), lambda w: w.T)
  for i in range(s.num_layers):
    hf, ours = f"model.layers.{i}.", ("blocks", i)
    out.update({
        hf + "input_layernorm.weight": (ours + ("attn_norm", "scale"), (D,), same),
        hf + "self_attn.q_proj.weight": (ours + ("attn", "wq"), (N * H, D),
                                         lambda w: w.T.reshape(D, N, H)),
        hf + "self_attn.k_proj.weight": (ours + ("attn", "wk"), (K * H, D),
                                         lambda w: w.T.reshape(D, K, H)),
        hf + "self_attn.v_proj.weight": (ours + ("attn", "wv"), (K * H, D),
                                         lambda w: w.T.reshape(D, K, H)),
        hf + "self_attn.o_proj.weight": (ours + ("attn", "wo"), (D, N * H),
                                         lambda w: w.T.reshape(N, H, D)),
        hf + "post_attention_layernorm.weight": (ours + ("mlp_norm", "scale"), (D,), same),
        hf + "mlp.gate_proj.weight": (ours + ("mlp", "w_gate"), (F, D), lambda w: w.T),
        hf + "mlp.up_proj.weight": (ours + ("mlp", "w_up"), (F, D), lambda w: w.T),
        hf + "mlp.down_proj.weight": (ours + ("mlp", "w_down"), (D, F), lambda w: w.T),
    })
  return out


def tensor_files(hf_dir: str) -> dict[str, str]:
  """Tensor name -> the .safetensors file holding it (one file, or a sharded index)."""
  single = os.path.join(hf_dir, "model.safetensors")
  index = os.path.join(hf_dir, "model.safetensors.index.json")
  if os.path.isfile(index):
    with open(index) as f:
      weight_map = json.load(f)["weight_map"]
    files = {name: os.path.join(hf_dir, file) for name, file in weight_map.items()}
  elif os.path.isfile(single):
    with safe_open(single, framework="numpy") as f:
      files = {name: single for name in f.keys()}
  else:
    raise FileNotFoundError(
        f"no model.safetensors or model.safetensors.index.json in {hf_dir} (a PyTorch .bin "
        "checkpoint? load it with transformers and save_pretrained it: that writes safetensors)")
  for path in sorted(set(files.values())):
    if not os.path.isfile(path):
      raise FileNotFoundError(f"{path} is listed in {index} but missing")
  return files


def load_tensors(hf_dir: str, cfg: ModelConfig) -> dict[tuple, np.ndarray]:
  """Our parameter path -> array in our layout and cfg.param_dtype, every tensor checked first."""
  wanted = tensor_map(cfg)
  files = tensor_files(hf_dir)
  extra = sorted(n for n in set(files) - set(wanted) if not n.endswith(IGNORED_SUFFIXES))
  if cfg.shape.tie_embeddings and "lm_head.weight" in extra:
    extra.remove("lm_head.weight")  # a tied copy; checked equal to the embedding below
  missing = sorted(set(wanted) - set(files))
  if missing:
    raise ValueError(f"{hf_dir} lacks {len(missing)} tensors of this model: {_few(missing)}")
  if extra:
    raise ValueError(f"{hf_dir} has {len(extra)} tensors this model has no place for: "
                     f"{_few(extra)} (a different architecture, or a wrong preset?)")
  # Headers first: a wrong dtype or shape stops the conversion before any data is read.
  by_file: dict[str, list[str]] = {}
  for name in wanted:
    by_file.setdefault(files[name], []).append(name)
  for path, names in by_file.items():
    with safe_open(path, framework="numpy") as f:
      for name in names:
        dtype, shape = f.get_slice(name).get_dtype(), tuple(f.get_slice(name).get_shape())
        if dtype not in FLOAT_DTYPES:
          raise ValueError(f"tensor {name} in {path} has dtype {dtype}; a weight must be one of "
                           f"{FLOAT_DTYPES}")
        if shape != wanted[name][1]:
          raise ValueError(f"tensor {name} in {path} has shape {shape}; this model needs "
                           f"{wanted[name][1]}")
  out = {}
  to = NP_DTYPES[cfg.param_dtype]
  for path, names in by_file.items():
    with safe_open(path, framework="numpy") as f:
      for name in names:
        target, _, layout = wanted[name]
        out[target] = np.ascontiguousarray(layout(f.get_tensor(name)).astype(to))
  if cfg.shape.tie_embeddings and "lm_head.weight" in files:
    with safe_open(files["lm_head.weight"], framework="numpy") as f:
      if not np.array_equal(f.get_tensor("lm_head.weight").astype(to), out[("embed",)]):
        raise ValueError(f"{hf_dir}: lm_head.weight differs from model.embed_tokens.weight but "
                         "the model ties them (tie_embeddings): set tie_embeddings=false")
  return out


def _few(names: list[str]) -> str:
  return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def convert(hf_dir: str, out_dir: str, cfg: ModelConfig) -> str:
  """Converts the checkpoint in hf_dir for a model of config `cfg` into out_dir.

  Gated memories' gates β start at `gate_init(cfg)`. Returns the checkpoints directory written
  (the value for config.init_from). Raises ValueError / FileNotFoundError, before writing
  anything, when the checkpoint and cfg disagree.
  """
  check_config(read_hf_config(hf_dir), cfg, hf_dir)
  if os.path.isdir(os.path.join(out_dir, "checkpoints")):
    raise ValueError(f"{out_dir} already holds checkpoints; convert into a new --out")
  abstract = nnx.eval_shape(lambda: InfiniTransformer(cfg, rngs=nnx.Rngs(0)))
  memory_params = {path for path, _ in nnx.to_flat_state(nnx.state(abstract, MemoryParam))}
  tensors = load_tensors(hf_dir, cfg)  # per layer: ("blocks", i, ...)
  params: dict = {}
  for path, leaf in migrate.flatten(nnx.to_pure_dict(nnx.state(abstract, nnx.Param))).items():
    sources = migrate.old_name(path, cfg)
    if all(source in tensors for source in sources):
      arrays = [tensors.pop(source) for source in sources]
      value = np.stack(arrays) if path[0] == "stages" else arrays[0]
    elif path[-2:] == ("gate", "beta"):
      value = np.full(leaf.shape, gate_init(cfg), leaf.dtype)
    elif path in memory_params:
      continue  # nothing pretrained (the options, RMT's memory tokens): init_from starts them fresh
    else:
      raise ValueError(f"the converter has no source for parameter {'/'.join(map(str, path))}")
    assert value.shape == leaf.shape and value.dtype == leaf.dtype, (path, value.shape, leaf)
    node = params
    for k in path[:-1]:
      node = node.setdefault(k, {})
    node[path[-1]] = value
  assert not tensors, f"tensors without a parameter: {sorted(tensors)}"
  ckpt = Checkpointer(out_dir, keep=1)
  try:
    ckpt.save(0, {"params": params})
  finally:
    ckpt.close()
  with open(os.path.join(out_dir, "config.json"), "w") as f:
    json.dump(dict(model=cfg.to_dict(), converted_from=os.path.abspath(hf_dir)), f,
              indent=2)
  return ckpt.directory


# --- The command line. ---

_FROM_HF = flags.DEFINE_string("from_hf", None, "Hugging Face model folder (config.json, "
                               "*.safetensors).")
_OUT = flags.DEFINE_string("out", None, "Where to write the infini-jax checkpoint (a new folder).")
_PRESET = flags.DEFINE_string("preset", None, "A preset of configs/models.py, with optional "
                              "overrides: 1b or 1b:infini.rule=delta,shape.segment_len=4096.")
_CONFIG = config_flags.DEFINE_config_file("config", None, "Or an experiment config file[:args]; "
                                          "its model is used.", lock_config=True)
_GATE_INIT = flags.DEFINE_float("gate_init", models.CONVERTED_GATE_INIT,
                                "Starting β of the gates, sigmoid(β) the memory read's share "
                                "(replaces the model config's infini.gate_init and "
                                "memorizing.gate_init).")


def model_from_flags() -> tuple[str, ModelConfig]:
  """(a name for the log, the ModelConfig) from --preset or --config."""
  if (_PRESET.value is None) == (_CONFIG.value is None):
    raise app.UsageError("give exactly one of --preset=NAME[:section.key=value,...] and "
                         "--config=FILE")
  if _CONFIG.value is not None:
    name, cfg = _CONFIG.value.model_name, configlib.model_config(_CONFIG.value)
  else:
    name, _, arg = _PRESET.value.partition(":")
    if name not in models.PRESETS:
      raise ValueError(f"unknown preset {name!r}; choose one of {sorted(models.PRESETS)}")
    cfg = ModelConfig.from_dict(configlib.parse_arg(arg, **models.PRESETS[name].to_dict()))
  gates = dict(gate_init=_GATE_INIT.value)
  return name, cfg.replace(infini=gates, memorizing=gates)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)  # orbax logs every file it writes at INFO
  try:
    name, cfg = model_from_flags()
    directory = convert(_FROM_HF.value, _OUT.value, cfg)
  except (ValueError, FileNotFoundError) as e:
    sys.exit(f"convert: error: {e}")
  gated = cfg.memory in ("infini", "memorizing")
  beta = gate_init(cfg)
  gates = f", gates β={beta:g} (sigmoid {1 / (1 + math.exp(-beta)):.3g})"
  print(f"wrote {directory}/0: {_FROM_HF.value} as model {name} ({cfg.param_dtype}, memory="
        f"{cfg.memory}{gates if gated else ''}); train from it with "
        f"--config.init_from={_OUT.value}, or evaluate it with eval.py --workdir={_OUT.value}")


if __name__ == "__main__":
  flags.mark_flags_as_required(["from_hf", "out"])
  app.run(main)
