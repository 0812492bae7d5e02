"""Sharding on 8 fake CPU devices (in a subprocess: the device count is fixed at jax import)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from infini_jax import config as configlib
from infini_jax import sharding as sh

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def mesh_runs(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("mesh")
  flags = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
  env = dict(os.environ, XLA_FLAGS=flags)
  proc = subprocess.run([sys.executable, "-m", "tests.mesh_worker", str(tmp / "out.json"),
                         str(tmp / "ckpt")], cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads((tmp / "out.json").read_text())


@pytest.mark.parametrize("mesh", ["(8, 1, 1)", "(2, 4, 1)", "(1, 2, 4)", "(2, 2, 2)"])
def test_sharded_training_matches_one_device(mesh_runs, mesh):
  run = mesh_runs["meshes"][mesh]
  np.testing.assert_allclose(run["losses"], mesh_runs["reference"], rtol=1e-5)
  assert run["max_param_diff"] < 1e-5
  # Partitioned as the default rules say: embed -> fsdp, heads / mlp / vocab -> tensor, and the
  # stacked layers' leading axis whole on every device (each layer's slice is split like it).
  assert run["specs"] == {"wq": "P(None, 'fsdp', 'tensor', None)",
                          "wo": "P(None, 'tensor', None, 'fsdp')",
                          "w_up": "P(None, 'fsdp', 'tensor')", "embed": "P('tensor', 'fsdp')"}
  data, fsdp, tensor = eval(mesh)
  assert run["wq_shard_shape"][1:] == [64 // fsdp, 4 // tensor, 16]
  assert run["mu_wq_spec"] == run["specs"]["wq"]  # Adam's moments live with their parameter


def test_checkpoint_saved_on_one_mesh_restores_on_another(mesh_runs):
  assert mesh_runs["resharded"]["wq_spec"] == "P(None, 'fsdp', 'tensor', None)"
  np.testing.assert_allclose(mesh_runs["resharded"]["loss"],
                             mesh_runs["meshes"]["(8, 1, 1)"]["losses"][2], rtol=1e-5)


def test_bad_meshes_and_rules_are_refused_before_compiling():
  with pytest.raises(ValueError, match="does not match the 8 devices"):
    sh.mesh_shape(dict(data=3, fsdp=1, tensor=1), 8)
  with pytest.raises(ValueError, match="at most one axis may be -1"):
    sh.mesh_shape(dict(data=-1, fsdp=-1, tensor=1), 8)
  assert sh.mesh_shape(dict(data=-1, fsdp=2, tensor=2), 8) == (2, 2, 2)
  with pytest.raises(ValueError, match="unknown logical axis 'sequence'"):
    sh.check_rules([("sequence", "data")])
  with pytest.raises(ValueError, match="unknown mesh axis 'model'"):
    sh.check_rules([("heads", "model")])
  c = configlib.defaults("tiny")
  c.batch_size = 6
  c.mesh.update(data=4, fsdp=1, tensor=2)
  with pytest.raises(ValueError, match="batch_size=6 does not divide across the data axes"):
    configlib.validate(c, device_count=8)
