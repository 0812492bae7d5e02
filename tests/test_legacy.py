"""Checkpoints written before the layers became a scan still load (infini_jax/migrate.py).

tests/data/legacy_<name>.npz hold, for 8 configurations of the tiny model (TINY with the
overrides in `config`), the per-layer parameters (`param/<path>`), right-padded inputs (`tokens`,
`mask` [B, L]) and what the code before the change computed from them: `logits` [B, L, W] of
model(tokens, mask=mask) and `nll` [B, L-1] of model.nll(tokens[:, :-1], tokens[:, 1:],
mask=mask[:, 1:]).
"""

import dataclasses
import glob
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

from infini_jax import migrate
from infini_jax.checkpoint import Checkpointer
from infini_jax.model import InfiniTransformer
from infini_jax.model_config import nest
from tests.conftest import TINY

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FILES = sorted(glob.glob(os.path.join(ROOT, "tests", "data", "legacy_*.npz")))
forward = nnx.jit(lambda model, x, mask: model(x, None, mask))
nll = nnx.jit(lambda model, x, mask: model.nll(x[:, :-1], x[:, 1:], None, mask[:, 1:]))


def name(path):
  return os.path.basename(path)[len("legacy_"):-len(".npz")]


def load(path):
  """(ModelConfig, the old parameters as a nested dict, the stored arrays)."""
  data = dict(np.load(path))
  # Stored as flat overrides, as the model config was then.
  cfg = TINY.replace(**nest(json.loads(str(data.pop("config")))))
  old: dict = {}
  for key in [k for k in data if k.startswith("param/")]:
    *parents, leaf = key.split("/")[1:]
    node = old
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = data.pop(key)
  return cfg, old, data


def migrated(cfg, params) -> InfiniTransformer:
  model = InfiniTransformer(cfg, rngs=nnx.Rngs(1))
  state = nnx.state(model, nnx.Param)
  nnx.replace_by_pure_dict(state, params)
  nnx.update(model, state)
  return model


def test_every_configuration_is_stored():
  assert sorted(map(name, FILES)) == ["compressive", "infini_deltanet", "infini_linear",
                                      "infini_options", "local", "memorizing", "rmt", "xl"]


@pytest.mark.parametrize("path", FILES, ids=name)
def test_migrated_parameters_compute_what_the_old_model_computed(path):
  """The same nll and logits to 1e-5, at every real token (a padded position's output is
  meaningless, and the old and new code fill it differently). Memorizing excepted: its kNN
  layer now also attends to the previous segment's Transformer-XL cache, as in Wu et al.
  (issue 29, defect 5d), so its parameters load but its loss differs."""
  cfg, old, data = load(path)
  model = migrated(cfg, migrate.stack(old, cfg))
  real = data["mask"]
  got_nll = np.asarray(nll(model, data["tokens"], real)[0])
  got_logits = np.asarray(forward(model, data["tokens"], real)[0])
  assert real.all(axis=1).any() and not real.all()  # a full row and a padded one
  if name(path) == "memorizing":
    assert np.abs(got_nll - data["nll"]).max() > 1e-2
    return
  np.testing.assert_allclose(got_nll, data["nll"], rtol=0, atol=1e-5)
  np.testing.assert_allclose(got_logits[real], data["logits"][real], rtol=0, atol=1e-5)


def test_stacking_names_a_missing_parameter_and_a_wrong_shape():
  cfg, old, _ = load(os.path.join(ROOT, "tests", "data", "legacy_local.npz"))
  with pytest.raises(ValueError, match="lack blocks/0/attn/gate for .*: was this checkpoint"):
    migrate.stack(old, cfg.replace(memory="infini"))
  with pytest.raises(ValueError, match="use the config the checkpoint was written with"):
    migrate.stack(old, cfg.replace(shape=dict(mlp_dim=2 * cfg.shape.mlp_dim)))


def test_the_command_line_rewrites_an_old_checkpoint(tmp_path):
  """An orbax checkpoint of old-layout parameters -> `python -m infini_jax.migrate` -> a
  checkpoint whose parameters, restored as eval.py restores them, are `migrate.stack`'s."""
  cfg, old, _ = load(os.path.join(ROOT, "tests", "data", "legacy_infini_options.npz"))
  old_dir, out_dir = tmp_path / "old", tmp_path / "new"
  ckpt = Checkpointer(str(old_dir), 1)
  ckpt.save(3, {"params": old})
  ckpt.close()
  config = tmp_path / "legacy_config.py"
  config.write_text("from infini_jax import config as configlib\n\n\ndef get_config():\n"
                    f"  return configlib.defaults('tiny', **{dataclasses.asdict(cfg)!r})\n")
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  done = subprocess.run([sys.executable, "-m", "infini_jax.migrate", f"--config={config}",
                         f"--old={old_dir}", f"--out={out_dir}"], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-2000:]
  assert "wrote the parameters of step 3" in done.stdout
  assert json.loads((out_dir / "config.json").read_text())["step"] == 3

  # Restored into the new model's abstract parameters (infini_jax/report.py's load_model).
  abstract = nnx.eval_shape(lambda: InfiniTransformer(cfg, rngs=nnx.Rngs(0)))
  graphdef, abstract_vars = nnx.split(abstract)
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  abstract_params = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
                                 nnx.to_pure_dict(abstract_vars))
  ckpt = Checkpointer(str(out_dir), 1)
  params, step = ckpt.restore_params(abstract_params)
  ckpt.close()
  assert step == 3
  want = migrate.flatten(migrate.stack(old, cfg))
  got = migrate.flatten(params)
  assert got.keys() == want.keys()
  for key, value in want.items():
    np.testing.assert_array_equal(np.asarray(got[key]), value, err_msg="/".join(map(str, key)))
  nnx.merge(graphdef, params)  # the restored tree is the model's
