"""The preset table: parameter counts from shapes alone, and the dry run's per-device bytes."""

import jax
import ml_collections
import pytest
from flax import nnx

from configs import models
from infini_jax import config as configlib
from infini_jax import dry_run
from infini_jax.model import InfiniTransformer


def count(cfg):
  shapes = nnx.eval_shape(lambda: InfiniTransformer(cfg, rngs=nnx.Rngs(0)))
  return sum(x.size for x in jax.tree.leaves(nnx.state(shapes, nnx.Param)))


@pytest.mark.parametrize("name, published", [("1b", 1.24e9), ("8b", 8.03e9)])
def test_llama_presets_match_published_sizes(name, published):
  # Published: Llama-3.2-1B 1.24B, Llama-3-8B 8.03B (the gates add 32 numbers per layer).
  assert abs(count(models.PRESETS[name]) - published) / published < 0.01


def test_paper_lm_shape():
  cfg = models.PRESETS["paper_lm"]
  s = cfg.shape
  assert (s.num_layers, s.num_heads, s.head_dim, s.mlp_dim, s.segment_len) == (12, 8, 128, 4096,
                                                                               2048)


def test_unknown_preset_is_refused():
  with pytest.raises(ValueError, match="unknown model preset 'xl'"):
    models.get("xl")


def test_dry_run_bytes_match_hand_computation():
  config = configlib.defaults("1b")
  config.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=16, tensor=4))
  cfg = configlib.model_config(config)
  r = dry_run.estimate(config, cfg, device_count=64)
  s = cfg.shape
  D, N, K, H, F, L, W = (s.d_model, s.num_heads, s.num_kv_heads, s.head_dim, s.mlp_dim,
                         s.num_layers, s.vocab_size)
  # Matrices split 16 (fsdp, over embed) x 4 (tensor, over heads / mlp / vocab) = 64 ways;
  # norm scales only over fsdp, gates only over tensor. float32 parameters.
  matrices = W * D + L * (2 * D * N * H + 2 * D * K * H + 3 * D * F)
  norms, gates = (2 * L + 1) * D, L * N
  assert r["parameters"] == matrices + norms + gates == count(cfg)
  assert r["param_bytes"] == 4 * (matrices // 64 + norms // 16 + gates // 4)
  # Adam's mu and nu, plus four int32 counters (Adam and schedule, in both parameter groups).
  assert r["optimizer_bytes"] == 2 * r["param_bytes"] + 4 * 4
  with pytest.raises(ValueError, match="does not match the 60 devices"):
    dry_run.estimate(config, cfg, device_count=60)
