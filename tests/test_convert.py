"""Importing Hugging Face Llama checkpoints (infini_jax/convert.py) and training from them.

A tiny random Llama built with transformers (torch, CPU; test-only dependencies) is the reference:
with the memory off, the converted model must give its logits, which pins RoPE, RMSNorm, SwiGLU and
grouped-query conventions at once.
"""

import json
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from safetensors.numpy import load_file, save_file

from configs import models
from infini_jax import config as configlib
from infini_jax import convert, rope, trainer
from infini_jax.checkpoint import restore_init_params
from infini_jax.memories import InfiniConfig
from infini_jax.memories.common import MemoryParam
from infini_jax.model import InfiniTransformer, ModelConfig, Shape
from tests.conftest import set_gates

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The tiny Llama's shape; the "tiny" preset with vocab_size=300 and segment_len=32.
CFG = ModelConfig(Shape(vocab_size=300, d_model=64, num_layers=2, num_heads=4, num_kv_heads=2,
                        head_dim=16, mlp_dim=128, segment_len=32, norm_eps=1e-5),
                  infini=InfiniConfig(gate_init=-4.0))
PRESET_ARG = "tiny:shape.vocab_size=300,shape.segment_len=32"


def hf_model(rope_scaling=None, seed=0):
  """A random LlamaForCausalLM with weights large enough that every convention shows: the
  default init (std 0.02, unit norms) leaves attention nearly uniform and the norms invisible."""
  torch.manual_seed(seed)
  config = transformers.LlamaConfig(
      vocab_size=CFG.shape.vocab_size, hidden_size=CFG.shape.d_model,
      num_hidden_layers=CFG.shape.num_layers,
      num_attention_heads=CFG.shape.num_heads, num_key_value_heads=CFG.shape.num_kv_heads,
      head_dim=CFG.shape.head_dim, intermediate_size=CFG.shape.mlp_dim, rope_theta=10_000.0,
      rms_norm_eps=CFG.shape.norm_eps, max_position_embeddings=256, tie_word_embeddings=False,
      rope_scaling=rope_scaling)
  model = transformers.LlamaForCausalLM(config).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith("norm.weight"):
        p.uniform_(0.5, 1.5)
      else:
        p.normal_(0.0, 0.2)
  return model


def hf_logits(model, tokens):
  with torch.no_grad():
    return model(torch.tensor(np.asarray(tokens))).logits.numpy()


def load(out_dir, cfg):
  """A model of config cfg with the parameters of the checkpoint in out_dir (as init_from)."""
  model = InfiniTransformer(cfg, rngs=nnx.Rngs(0))
  state = nnx.state(model, nnx.Param)
  memory_params = {"/".join(map(str, p)) for p, _ in nnx.to_flat_state(
      nnx.state(model, MemoryParam))}
  params, note = restore_init_params(out_dir, nnx.to_pure_dict(state), memory_params)
  nnx.replace_by_pure_dict(state, params)
  nnx.update(model, state)
  return model, note


def tokens(length, seed=0, batch=2):
  return jax.random.randint(jax.random.key(seed), (batch, length), 0, CFG.shape.vocab_size)


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("hf_llama"))
  hf_model().save_pretrained(path)
  return path


@pytest.fixture(scope="module")
def converted(hf_dir, tmp_path_factory):
  """The command line's output for hf_dir, with the gates at β = -4."""
  out = str(tmp_path_factory.mktemp("converted") / "llama")
  proc = subprocess.run(
      [sys.executable, "-m", "infini_jax.convert", f"--from_hf={hf_dir}", f"--out={out}",
       f"--preset={PRESET_ARG}", "--gate_init=-4"],
      cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "gates β=-4 (sigmoid 0.018)" in proc.stdout
  return out


def test_memory_off_reproduces_transformers_logits(hf_dir, converted):
  # memory="local" has no gates: the converted ones are left out (and said so).
  model, note = load(converted, CFG.replace(memory="local"))
  assert "unused there: 1 memory parameters (stages/0/blocks/attn/memory/gate/beta" in note
  x = tokens(CFG.shape.segment_len)  # one whole segment: positions 0..31 as in transformers
  ours = np.asarray(model(x)[0])
  want = hf_logits(hf_model(), x)
  assert np.abs(want).max() > 1.0  # the reference is not trivially small
  np.testing.assert_allclose(ours, want, atol=1e-4, rtol=0)
  # Infini-attention with the gates closed (sigmoid(-100) = 0 in float32) is the same model.
  model, _ = load(converted, CFG)
  set_gates(model, -100.0)
  np.testing.assert_allclose(np.asarray(model(x)[0]), want, atol=1e-4, rtol=0)


def test_memory_on_later_segments_depend_on_earlier_ones(converted):
  model, _ = load(converted, CFG)
  np.testing.assert_allclose(model.gates(), jax.nn.sigmoid(-4.0), rtol=1e-6)
  local, _ = load(converted, CFG.replace(memory="local"))
  T = CFG.shape.segment_len
  x = tokens(3 * T)
  y = x.at[:, :T].set((x[:, :T] + 1) % CFG.shape.vocab_size)  # only the first segment differs
  for m, linked in [(model, True), (local, False)]:
    a, b = np.asarray(m(x)[0]), np.asarray(m(y)[0])
    assert np.isfinite(a).all()
    change = np.abs(a[:, 2 * T:] - b[:, 2 * T:]).max()  # the third segment's logits
    assert (change > 1e-3) if linked else (change == 0.0), change


def test_sharded_bfloat16_checkpoint_converts_to_the_same_parameters(hf_dir, converted, tmp_path):
  tensors = load_file(os.path.join(hf_dir, "model.safetensors"))
  names = sorted(tensors)
  shards = {"model-00001-of-00002.safetensors": names[::2],
            "model-00002-of-00002.safetensors": names[1::2]}
  bf16 = {n: tensors[n].astype(jnp.bfloat16) for n in names}
  for file, part in shards.items():
    save_file({n: bf16[n] for n in part}, str(tmp_path / file), metadata={"format": "pt"})
  with open(tmp_path / "model.safetensors.index.json", "w") as f:
    json.dump({"metadata": {}, "weight_map": {n: f for f, ns in shards.items() for n in ns}}, f)
  shutil.copy(os.path.join(hf_dir, "config.json"), tmp_path)
  out = convert.convert(str(tmp_path), str(tmp_path / "out"), CFG)
  a, _ = load(out, CFG)
  b, _ = load(converted, CFG)
  for x, y in zip(jax.tree.leaves(nnx.state(a)), jax.tree.leaves(nnx.state(b))):
    np.testing.assert_array_equal(x, np.asarray(y).astype(jnp.bfloat16).astype(np.float32))


def edited_copy(hf_dir, path, edit):
  """A copy of hf_dir whose tensors went through edit(dict) -> dict."""
  shutil.copytree(hf_dir, path)
  tensors = edit(load_file(os.path.join(hf_dir, "model.safetensors")))
  save_file(tensors, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
  return str(path)


def test_bad_checkpoints_are_refused_with_the_reason(hf_dir, tmp_path):
  up = "model.layers.1.mlp.up_proj.weight"
  cases = [
      (lambda t: {k: v for k, v in t.items() if k != up},
       f"lacks 1 tensors of this model: {up}"),
      (lambda t: {**t, up: t[up].astype(np.int64)}, f"tensor {up} in .* has dtype I64"),
      (lambda t: {**t, up: t[up][:64]}, f"tensor {up} in .* has shape \\(64, 64\\)"),
      (lambda t: {**t, "model.layers.0.self_attn.q_proj.bias": np.zeros(64, np.float32)},
       "has 1 tensors this model has no place for: model.layers.0.self_attn.q_proj.bias"),
  ]
  for i, (edit, message) in enumerate(cases):
    src = edited_copy(hf_dir, tmp_path / f"hf{i}", edit)
    with pytest.raises(ValueError, match=message):
      convert.convert(src, str(tmp_path / f"out{i}"), CFG)
    assert not os.path.exists(tmp_path / f"out{i}" / "checkpoints")


def test_mismatched_preset_names_every_field(hf_dir, tmp_path):
  wrong = CFG.replace(shape=dict(num_layers=3, head_dim=8, tie_embeddings=True),
                      rope=dict(theta=5e5))
  with pytest.raises(ValueError) as e:
    convert.convert(hf_dir, str(tmp_path / "out"), wrong)
  message = str(e.value)
  assert "\n" not in message
  for part in ["num_hidden_layers=2 but model.shape.num_layers=3",
               "head_dim=16 but model.shape.head_dim=8",
               "rope_theta=10000.0 but model.rope.theta=500000.0",
               "tie_word_embeddings=False but model.shape.tie_embeddings=True"]:
    assert part in message, message
  # The command line says it in one line and exits non-zero.
  proc = subprocess.run(
      [sys.executable, "-m", "infini_jax.convert", f"--from_hf={hf_dir}",
       f"--out={tmp_path / 'cli'}", "--preset=1b"], cwd=ROOT, capture_output=True, text=True,
      timeout=120)
  assert proc.returncode != 0
  assert "convert: error: the model config does not match" in proc.stderr
  assert "hidden_size=64 but model.shape.d_model=2048" in proc.stderr
  assert "rope_scaling='none' but model.rope.scaling='llama3'" in proc.stderr


# The published config.json files (their model-shape fields), in the pre-transformers-5 layout.
PUBLISHED = {
    "1b": dict(  # meta-llama/Llama-3.2-1B
        model_type="llama", hidden_act="silu", hidden_size=2048, intermediate_size=8192,
        head_dim=64, max_position_embeddings=131072, num_attention_heads=32,
        num_hidden_layers=16, num_key_value_heads=8, rms_norm_eps=1e-05, rope_theta=500000.0,
        rope_scaling=dict(factor=32.0, high_freq_factor=4.0, low_freq_factor=1.0,
                          original_max_position_embeddings=8192, rope_type="llama3"),
        tie_word_embeddings=True, vocab_size=128256),
    "8b": dict(  # meta-llama/Meta-Llama-3-8B
        model_type="llama", hidden_act="silu", hidden_size=4096, intermediate_size=14336,
        max_position_embeddings=8192, num_attention_heads=32, num_hidden_layers=32,
        num_key_value_heads=8, rms_norm_eps=1e-05, rope_scaling=None, rope_theta=500000.0,
        tie_word_embeddings=False, vocab_size=128256),
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_presets_match_the_published_llama_configs(name, tmp_path):
  with open(tmp_path / "config.json", "w") as f:
    json.dump(PUBLISHED[name], f)
  convert.check_config(convert.read_hf_config(str(tmp_path)), models.PRESETS[name], str(tmp_path))


def test_other_architectures_are_refused(tmp_path):
  config = dict(PUBLISHED["8b"], model_type="qwen2", attention_bias=True,
                rope_scaling=dict(rope_type="yarn", factor=4.0))
  with open(tmp_path / "config.json", "w") as f:
    json.dump(config, f)
  with pytest.raises(ValueError, match="not a Llama-architecture model this converter can import: "
                     "model_type is 'qwen2', not 'llama'; attention_bias is true .*; rope type "
                     "'yarn' is not supported"):
    convert.read_hf_config(str(tmp_path))


LLAMA3 = {"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 64}


def test_llama3_frequencies_match_transformers():
  config = transformers.LlamaConfig(hidden_size=64, num_attention_heads=4, head_dim=16,
                                    rope_theta=10_000.0, rope_scaling=dict(LLAMA3))
  want, _ = transformers.modeling_rope_utils.ROPE_INIT_FUNCTIONS["llama3"](config, "cpu")
  scaling = rope.Scaling(4.0, 1.0, 4.0, 64)
  got = rope.frequencies(16, 10_000.0, scaling)
  np.testing.assert_allclose(got, want.numpy(), rtol=1e-6)
  plain = rope.frequencies(16, 10_000.0)
  assert (got < plain).any() and (got == plain).any()  # some rescaled, some kept


def test_llama3_rope_scaling_reproduces_transformers_logits(tmp_path):
  # Llama 3.1/3.2 (and the 1b preset) rescale the RoPE frequencies: pinned end to end here.
  reference = hf_model(rope_scaling=dict(LLAMA3))
  reference.save_pretrained(str(tmp_path / "hf"))
  cfg = CFG.replace(memory="local", rope=dict(scaling="llama3", factor=4.0, original_max_len=64))
  out = convert.convert(str(tmp_path / "hf"), str(tmp_path / "out"), cfg)
  model, _ = load(out, cfg)
  x = tokens(CFG.shape.segment_len)
  np.testing.assert_allclose(np.asarray(model(x)[0]), hf_logits(reference, x), atol=1e-4)


def test_a_source_without_gates_gets_the_runs_gate_init(hf_dir, converted, tmp_path):
  local = convert.convert(hf_dir, str(tmp_path / "local"), CFG.replace(memory="local"))
  model, note = load(local, CFG.replace(infini=dict(gate_init=-3.0)))
  assert "it has no gates: 2 layers start at this run's model.infini.gate_init β=-3" in note
  want, _ = load(converted, CFG)
  np.testing.assert_array_equal(model.gates(), jax.nn.sigmoid(jnp.full((2, 4), -3.0)))
  np.testing.assert_array_equal(model.stages[0].blocks.attn.wo[...][1],
                                want.stages[0].blocks.attn.wo[...][1])
  # Anything else the source lacks or has in another shape is an error, not a fresh init.
  with pytest.raises(ValueError, match=r"params unembed is \(64, 300\) there, missing here"):
    load(local, CFG.replace(shape=dict(tie_embeddings=True)))


def test_training_with_init_from_starts_from_the_converted_parameters(converted, tmp_path, capsys,
                                                                     monkeypatch):
  c = configlib.defaults("tiny", shape=dict(vocab_size=300, segment_len=32, norm_eps=1e-5),
                         infini=dict(gate_init=-3.0))
  monkeypatch.chdir(os.path.dirname(converted))
  c.init_from = os.path.basename(converted)  # relative, as typed on a command line
  c.seq_len, c.batch_size = 64, 2
  c.data.update(subset="small", data_dir=str(tmp_path / "tfds"))
  c.optimizer.update(lr=0.0, warmup_steps=0)  # the one step changes nothing
  c.train.update(steps=1, log_every=1, eval_every=0, checkpoint_every=1, peak_flops=1e11)
  workdir = str(tmp_path / "run")
  trainer.train_and_evaluate(c, workdir)
  assert "initialised the parameters from the checkpoint of step 0" in capsys.readouterr().out
  trained, _ = load(os.path.join(workdir, "checkpoints"), CFG)
  want, _ = load(converted, CFG)
  for a, b in zip(jax.tree.leaves(nnx.state(trained)), jax.tree.leaves(nnx.state(want))):
    np.testing.assert_array_equal(a, b)  # gates included: the source's -4, not gate_init -3
  # The run's own checkpoint wins over init_from when it starts again.
  trainer.train_and_evaluate(c, workdir)
  out = capsys.readouterr().out
  assert "resumed from the checkpoint of step 1" in out and "initialised" not in out


def test_init_from_must_exist(tmp_path):
  c = configlib.defaults("tiny")
  c.init_from = str(tmp_path / "nowhere")
  with pytest.raises(ValueError, match="init_from=.*nowhere is not a directory"):
    configlib.validate(c)


@pytest.mark.parametrize("option", [
    dict(infini=dict(write_gate=True)), dict(infini=dict(memory_scale=True)),
    dict(infini=dict(decay=True)), dict(infini=dict(query_gate=True)),
    dict(token_shift=dict(size=2)), dict(infini=dict(xl_cache=True, memory_add=True)),
    dict(infini=dict(rule="deltanet"))])
def test_init_from_a_converted_llm_into_every_option(converted, option):
  """The source has the LM's parameters and the gates; every parameter an option adds is a
  MemoryParam and starts fresh, however it is named (the old lists of names missed some)."""
  cfg = CFG.replace(**option)
  model, note = load(converted, cfg)
  want, _ = load(converted, CFG)
  np.testing.assert_array_equal(model.embed[...], want.embed[...])
  fresh = {"/".join(map(str, p)): v for p, v in nnx.to_flat_state(nnx.state(
      InfiniTransformer(cfg, rngs=nnx.Rngs(0)), MemoryParam))}
  got = {"/".join(map(str, p)): v for p, v in nnx.to_flat_state(nnx.state(model, MemoryParam))}
  extra = [n for n in fresh if not n.endswith("gate/beta")]
  assert extra and f"fresh {extra[0]}" in note or not extra
  for name in extra:
    np.testing.assert_array_equal(got[name][...], fresh[name][...])
