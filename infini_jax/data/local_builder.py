"""The base of our TFDS builders: generated locally, nothing downloaded, nothing registered.

Not registered in the TFDS catalog (sources.py constructs builders by class), so importing a
module twice, or running one as a script, never collides with a name. And no checksums file:
TFDS 4.9.10 looks for one next to a builder's code through `code_path`, which needs the
`importlib_resources` backport that its own requirements install only for Python < 3.9, and
fails on a builder defined inside a package. Our builders download nothing to check.

Splits over 1 GB: TFDS's writer keeps up to 1 GB of examples in memory, then spills them to
temporary bucket files through `tf.io.gfile`, which needs TensorFlow (a 2 GB text_files corpus
failed with "No module named 'tensorflow'"). Without TensorFlow, our builders give that one
module plain local files instead (`_local_spill_files`), so any corpus size prepares.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import types
from collections.abc import Iterator

import tensorflow_datasets as tfds
from tensorflow_datasets.core import shuffle


class _NoResourceError(Exception):
  """Stands for tf.errors.ResourceExhaustedError, which local files never raise."""


# The three tf.io.gfile calls and the one error TFDS's shuffle buckets use, on local files.
_LOCAL_TF = types.SimpleNamespace(
    io=types.SimpleNamespace(gfile=types.SimpleNamespace(
        GFile=open, exists=os.path.exists, remove=os.remove)),
    errors=types.SimpleNamespace(ResourceExhaustedError=_NoResourceError))


@contextlib.contextmanager
def _local_spill_files() -> Iterator[None]:
  if importlib.util.find_spec("tensorflow") is not None:
    yield  # TensorFlow's own files (they also reach gs:// and other remote data_dirs).
    return
  saved, shuffle.tf = shuffle.tf, _LOCAL_TF
  try:
    yield
  finally:
    shuffle.tf = saved


class LocalBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """A GeneratorBasedBuilder whose data is generated on this machine (array_record)."""

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> None:
    return None

  def download_and_prepare(self, *args, **kwargs):
    with _local_spill_files():
      return super().download_and_prepare(*args, **kwargs)
