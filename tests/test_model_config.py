"""The model config's sections (infini_jax/model_config.py): each refuses its own bad values,
ModelConfig the combinations that span sections, overrides reach the model by their nested keys,
and the flat configs of earlier runs still read as the same model."""

import json
import math
import os
import subprocess
import sys

import pytest
from flax import nnx

from configs import models
from infini_jax import config as configlib
from infini_jax import report
from infini_jax.memories import (CompressiveConfig, InfiniConfig, MemorizingConfig, RMTConfig,
                                 TokenShiftConfig)
from infini_jax.model import InfiniTransformer, ModelConfig, Shape
from infini_jax.model_config import nest
from infini_jax.rope import RoPE
from tests.conftest import TINY
from tests.test_experiments import FLAT_TINY

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPE = dict(vocab_size=64, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8,
             mlp_dim=64, segment_len=8)

# (section, its bad values, the message's start): each section alone, outside any ModelConfig.
REFUSED = [
    (Shape, dict(SHAPE, d_model=0), "model.shape.d_model=0: must be a positive integer"),
    (Shape, dict(SHAPE, num_kv_heads=3),
     "model.shape.num_heads=4: must be a multiple of model.shape.num_kv_heads=3"),
    (Shape, dict(SHAPE, norm_eps=-1.0), "model.shape.norm_eps=-1.0: must be a small positive"),
    (RoPE, dict(scaling="yarn"), "model.rope.scaling='yarn': use one of ('none', 'llama3')"),
    (RoPE, dict(theta=0.5), "model.rope.theta=0.5: must be a number > 1"),
    (RoPE, dict(scaling="llama3", low_freq_factor=4.0, high_freq_factor=1.0),
     "model.rope.high_freq_factor=1.0: must exceed model.rope.low_freq_factor=4.0"),
    (InfiniConfig, dict(rule="hebbian"), "model.infini.rule='hebbian': use one of"),
    (InfiniConfig, dict(gate_init=math.inf), "model.infini.gate_init=inf: must be a finite"),
    (InfiniConfig, dict(rule="deltanet", memory_scale=True),
     "model.infini.memory_scale=True: has no effect with rule='deltanet'"),
    (MemorizingConfig, dict(topk=0), "model.memorizing.topk=0: must be >= 1"),
    (MemorizingConfig, dict(knn_layer=-2), "model.memorizing.knn_layer=-2: must be a layer"),
    (CompressiveConfig, dict(compress_rate=0), "model.compressive.compress_rate=0: must be >= 1"),
    (CompressiveConfig, dict(memory_size=-1), "model.compressive.memory_size=-1: must be >= 0"),
    (RMTConfig, dict(memory_tokens=-1), "model.rmt.memory_tokens=-1: must be >= 0"),
    (TokenShiftConfig, dict(size=-1), "model.token_shift.size=-1: must be >= 0"),
    (TokenShiftConfig, dict(init=0.0), "model.token_shift.init=0.0: has no effect without"),
]


@pytest.mark.parametrize("section,values,message", REFUSED,
                         ids=[f"{s.__name__}-{m.split('=')[0]}" for s, _, m in REFUSED])
def test_each_section_refuses_its_own_bad_values(section, values, message):
  with pytest.raises(ValueError) as e:
    section(**values)
  assert str(e.value).startswith(message) and "\n" not in str(e.value)


# (changes to TINY, the message's start): combinations no section can see on its own.
ACROSS = [
    (dict(memory="xl", infini=dict(decay=True)),
     "model.infini.decay=True: an option of memory='infini', not 'xl': unset it "
     "(--config.model.infini.decay=false)"),
    (dict(memory="memorizing", memorizing=dict(memory_size=16, topk=4, knn_layer=2)),
     "model.memorizing.knn_layer=2: not a layer of model.shape.num_layers=2"),
    (dict(memory="memorizing", memorizing=dict(memory_size=2, topk=4)),
     "model.memorizing.memory_size=2: memory=memorizing needs at least"),
    (dict(memory="compressive", compressive=dict(memory_size=4, compress_rate=3)),
     "model.compressive.compress_rate=3: must divide model.shape.segment_len=8"),
    (dict(memory="rmt"), "model.rmt.memory_tokens=0: memory=rmt needs >= 1"),
]


@pytest.mark.parametrize("changes,message", ACROSS, ids=[m.split("=")[0] for _, m in ACROSS])
def test_model_config_refuses_what_spans_sections(changes, message):
  with pytest.raises(ValueError) as e:
    TINY.replace(**changes)
  assert str(e.value).startswith(message) and "\n" not in str(e.value)
  # The same section values are fine where the memory is Infini, which uses no other section.
  TINY.replace(**{k: v for k, v in changes.items() if k != "memory"}, memory="infini")


def test_nested_overrides_reach_the_model():
  c = configlib.defaults("tiny", shape=dict(num_layers=1), infini=dict(write_gate=True))
  c.model.shape.segment_len = 32
  c.model.rope.theta = 5e5
  c.seq_len = 64
  cfg = configlib.validate(c, device_count=1)
  assert (cfg.shape.num_layers, cfg.shape.segment_len, cfg.rope.theta) == (1, 32, 5e5)
  assert cfg.shape.d_model == models.PRESETS["tiny"].shape.d_model  # the rest of the preset
  model = InfiniTransformer(cfg, rngs=nnx.Rngs(0))
  assert list(model.stages[0].blocks.attn.memory.options) == ["write_gate"]
  # A typo'd key is refused by name, also where a nested dict is read.
  with pytest.raises(ValueError, match=r"unknown key model.infini.wirte_gate; model.infini has"):
    models.get("tiny", infini=dict(wirte_gate=True))
  with pytest.raises(ValueError, match=r"unknown key model.wirte_gate"):
    ModelConfig.from_dict(dict(TINY.to_dict(), wirte_gate=True))
  # Dotted keys in a config argument string (python -m infini_jax.convert --preset=NAME:...).
  parsed = configlib.parse_arg("shape.segment_len=16,infini.write_gate", **TINY.to_dict())
  assert ModelConfig.from_dict(parsed) == TINY.replace(shape=dict(segment_len=16),
                                                      infini=dict(write_gate=True))
  with pytest.raises(ValueError, match="unknown config argument 'shape.segment_lenn'"):
    configlib.parse_arg("shape.segment_lenn=16", **TINY.to_dict())


def test_the_command_line_takes_nested_keys_and_refuses_a_typo(tmp_path):
  base = [sys.executable, "train.py", "--config=configs/demo.py:runlocal",
          f"--workdir={tmp_path}", "--dry_run", "--dry_run_devices=1"]
  ok = subprocess.run(base + ["--config.model.shape.segment_len=32", "--config.seq_len=128",
                              "--config.model.infini.write_gate=true"],
                      cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert ok.returncode == 0, ok.stderr[-2000:]
  assert "segment 32" in ok.stdout
  typo = subprocess.run(base + ["--config.model.infini.wirte_gate=true"], cwd=ROOT,
                        capture_output=True, text=True, timeout=300)
  assert typo.returncode != 0 and "wirte_gate" in typo.stderr


def test_a_flat_config_of_an_earlier_run_reads_as_the_same_model():
  assert ModelConfig.from_dict(FLAT_TINY) == models.PRESETS["tiny"]
  # A key once shared by two memories goes to the section of the config's memory.
  flat = dict(FLAT_TINY, memory="memorizing", memory_size=128, topk=8, gate_init=-3.0,
              token_shift=4, token_shift_init=0.0, rope_theta=5e5)
  assert ModelConfig.from_dict(flat) == models.PRESETS["tiny"].replace(
      memory="memorizing", memorizing=dict(memory_size=128, topk=8, gate_init=-3.0),
      token_shift=dict(size=4, init=0.0), rope=dict(theta=5e5))
  infini = ModelConfig.from_dict(dict(FLAT_TINY, gate_init=-3.0, memory_size=64))
  assert infini == models.PRESETS["tiny"].replace(infini=dict(gate_init=-3.0))
  # Overrides without a memory: to both sections that had the key.
  assert nest(dict(memory_decay=True, segment_len=16, memory_size=8)) == dict(
      infini=dict(decay=True), shape=dict(segment_len=16),
      memorizing=dict(memory_size=8), compressive=dict(memory_size=8))
  with pytest.raises(ValueError, match="unknown flat model key 'wirte_gate'"):
    nest(dict(wirte_gate=True))


def test_report_compares_a_flat_training_config_key_by_key(tmp_path, capsys):
  with open(tmp_path / "config.json", "w") as f:
    json.dump(dict(model=dict(FLAT_TINY, rule="delta")), f)
  report._note_training_config(configlib.defaults("tiny"), str(tmp_path))
  out = capsys.readouterr().out.strip().splitlines()
  assert out == [f"note: model.infini.rule='linear' here, 'delta' in training "
                 f"({tmp_path / 'config.json'})"]
