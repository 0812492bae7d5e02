"""`python_code`: the running interpreter's standard library sources as a long-document corpus.

It exists wherever Python does, so the demo trains on real long documents (argparse.py,
typing.py, _pydecimal.py, ... tens of thousands of tokens each) with no download. One document
per .py file under `sysconfig.get_paths()['stdlib']`, tests included, site-packages left out,
every length kept. The corpus depends on the Python version, so it is recorded in the dataset
metadata and `sources.dataset_python_version(data_dir)` returns it for results to print.

Configs: `stdlib` (default, every file: about 1.8k files, 30 MB on 3.11) and `small` (a few
packages, for tests and smoke runs).
"""

from __future__ import annotations

import dataclasses
import os
import platform
import sysconfig
import tokenize

import tensorflow_datasets as tfds

from infini_jax.data import text_files

_EXCLUDED_DIRS = frozenset({"site-packages", "dist-packages", "__pycache__"})


@dataclasses.dataclass
class PythonCodeConfig(tfds.core.BuilderConfig):
  """include: relative path prefixes to keep (empty keeps the whole standard library)."""

  include: tuple[str, ...] = ()


def stdlib_root() -> str:
  return sysconfig.get_paths()["stdlib"]


def stdlib_files(include: tuple[str, ...] = ()) -> list[str]:
  """Sorted absolute paths of the standard library's .py files (restricted to `include`)."""
  root = stdlib_root()
  files = []
  for dirpath, dirnames, names in os.walk(root):
    dirnames[:] = sorted(d for d in dirnames if d not in _EXCLUDED_DIRS)
    for name in names:
      if name.endswith(".py"):
        path = os.path.join(dirpath, name)
        rel = os.path.relpath(path, root).replace(os.sep, "/")
        if not include or rel.startswith(include):
          files.append(path)
  return sorted(files)


def read_source(path: str) -> str:
  """A .py file as text, honouring its coding cookie; undecodable bytes become U+FFFD.

  The standard library's tests hold a few files with deliberately broken encodings; they
  stay in the corpus as the text Python would show for them.
  """
  with open(path, "rb") as f:
    data = f.read()
  try:
    encoding, _ = tokenize.detect_encoding(iter(data.splitlines(keepends=True)).__next__)
  except SyntaxError:
    encoding = "utf-8"
  try:
    return data.decode(encoding, errors="replace")
  except LookupError:  # A cookie naming a codec that does not exist.
    return data.decode("utf-8", errors="replace")


class PythonCode(text_files.FileCorpusBuilder, skip_registration=True):
  """The Python standard library's .py files, one document per file (see python_code.py)."""

  name = "python_code"
  BUILDER_CONFIGS = [
      PythonCodeConfig(name="stdlib", description="every .py file of the standard library"),
      PythonCodeConfig(name="small", include=("json/", "email/", "http/", "urllib/"),
                       description="four packages of the standard library (tests, smoke runs)"),
  ]
  DEFAULT_BUILDER_CONFIG_NAME = "stdlib"

  def _files(self) -> tuple[str, list[str]]:
    return stdlib_root(), stdlib_files(self.builder_config.include)

  def _read(self, path: str) -> str:
    return read_source(path)

  def _metadata(self) -> dict[str, str]:
    # Set when the builder is made; once prepared, the stored value replaces it on load.
    return {"python_version": platform.python_version()}
