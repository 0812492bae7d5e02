"""`pip install .` installs the whole package: a wheel built from the tree, installed alone into a
fresh venv, imports every module of infini_jax from outside the repository."""

import json
import os
import pathlib
import shutil
import subprocess
import sys
import sysconfig
import venv

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_wheel_installs_every_module(tmp_path):
  # Built from a copy: setuptools writes build/ and *.egg-info beside the sources.
  src, wheels = tmp_path / "src", tmp_path / "wheels"
  for name in ("infini_jax", "configs"):
    shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
  shutil.copy(ROOT / "pyproject.toml", src)
  subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                  "--no-build-isolation", "--wheel-dir", str(wheels), str(src)],
                 check=True, capture_output=True, timeout=120, cwd=tmp_path)
  (wheel,) = wheels.glob("infini_jax-*.whl")

  # A fresh venv without pip; the dependencies come from this environment through a .pth file,
  # so that the test installs nothing from the network.
  env_dir = tmp_path / "venv"
  venv.create(env_dir, with_pip=False)
  python = env_dir / "bin" / "python"
  site = subprocess.run(
      [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
      check=True, capture_output=True, text=True).stdout.strip()
  (pathlib.Path(site) / "deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
  subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet",
                  "--no-deps", str(wheel)], check=True, capture_output=True, timeout=120)

  expected = sorted(
      ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
      for p in (ROOT / "infini_jax").rglob("*.py"))
  script = ("import importlib, json, sys\n"
            "files = {m: importlib.import_module(m).__file__ for m in json.loads(sys.argv[1])}\n"
            "print(json.dumps(files))\n")
  proc = subprocess.run([str(python), "-c", script, json.dumps(expected)], cwd=tmp_path,
                        capture_output=True, text=True, timeout=300,
                        env=dict(os.environ, PYTHONPATH="", JAX_PLATFORMS="cpu"))
  assert proc.returncode == 0, proc.stderr[-2000:]
  files = json.loads(proc.stdout.strip().splitlines()[-1])
  assert "infini_jax.memories.infini" in files and "infini_jax.data.pipeline" in files
  for module, path in files.items():  # each from the installed wheel, none from the checkout
    assert pathlib.Path(path).is_relative_to(env_dir), (module, path)


def test_training_needs_no_test_or_accelerator_packages():
  # `make train` installs requirements.txt alone: no torch (GBs), transformers, libtpu or pytest.
  names = {line.split("==")[0].split("[")[0].strip().lower()
           for line in (ROOT / "requirements.txt").read_text().splitlines()
           if line.strip() and not line.startswith("#")}
  assert not names & {"torch", "transformers", "libtpu", "pytest", "jax-cuda12-plugin"}
  assert {"jax", "flax", "safetensors"} <= names
