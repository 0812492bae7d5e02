"""Datasets by name: prepare our own builders, and open any prepared one as documents (strings).

Every dataset is a TFDS dataset stored as array_record under `data_dir` and read through
`builder.as_data_source()` (random access, numpy, no TensorFlow). Nothing is ever downloaded
here: our builders (`EMBEDDED`) are generated locally by `prepare`, and reading a dataset that is
not prepared raises an error naming the command that prepares it.

pg19 uses the TFDS catalog's own builder. Preparing it needs TensorFlow and network access
(it reads gs://deepmind-gutenberg), so do it once on a machine that has both:

    pip install tensorflow tensorflow-datasets
    tfds build pg19 --data_dir=DATA_DIR --file_format=array_record
    # or in Python:
    #   tfds.builder("pg19", data_dir=DATA_DIR, file_format="array_record").download_and_prepare()

then copy DATA_DIR/pg19 to the data_dir of the runs (config: data.name="pg19"). Reading needs
neither: the files are read back with `tfds.builder_from_directory`, the catalog's generation
code is not run. Its text feature `book_text` is read as the document. The same books as a local
folder of .txt files (PG19's train/validation/test layout) can instead go through `text_files`.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator, Sequence
from typing import Any

import tensorflow_datasets as tfds
from etils import epath

from infini_jax.data import booksum, passkey, python_code, text_files


def _python_code(config: str = "stdlib") -> tuple[type, dict[str, Any]]:
  return python_code.PythonCode, {"config": config}


def _text_files(text_glob: str = "") -> tuple[type, dict[str, Any]]:
  return text_files.TextFiles, {"config": text_files.text_files_config(text_glob)}


def _passkey(**kwargs: Any) -> tuple[type, dict[str, Any]]:
  return passkey.Passkey, {"config": passkey.passkey_config(**kwargs)}


# Our own builders: name -> function(builder kwargs) -> (builder class, constructor kwargs).
EMBEDDED = {"python_code": _python_code, "text_files": _text_files, "passkey": _passkey,
            "booksum": booksum.source}
# Catalog datasets we read once prepared elsewhere: name -> the feature holding the document.
CATALOG_TEXT_FEATURE = {"pg19": "book_text"}
DATASETS = tuple(EMBEDDED) + tuple(CATALOG_TEXT_FEATURE)
_PG19_COMMAND = "tfds build pg19 --data_dir={data_dir} --file_format=array_record"


def check_name(name: str) -> None:
  if name not in DATASETS:
    raise ValueError(f"unknown dataset {name!r}: known datasets are {', '.join(DATASETS)}")


def _builder(name: str, data_dir: str, builder_kwargs: dict[str, Any]) -> tfds.core.DatasetBuilder:
  cls, kwargs = EMBEDDED[name](**builder_kwargs)
  return cls(data_dir=os.fspath(data_dir), file_format="array_record", **kwargs)


def prepare(name: str, data_dir: str, **builder_kwargs: Any) -> tfds.core.DatasetBuilder:
  """Generates one of our datasets under data_dir (a fast no-op when it is already there).

  builder_kwargs: python_code: config ('stdlib' | 'small'); text_files: text_glob;
  passkey: length, position, digits, num_examples, num_eval_examples, seed, tokenizer.
  """
  check_name(name)
  if name not in EMBEDDED:
    raise ValueError(f"{name} is not generated here; prepare it on a machine with TensorFlow "
                     "and internet access: " + _PG19_COMMAND.format(data_dir=data_dir))
  builder = _builder(name, data_dir, builder_kwargs)
  if builder.is_prepared():
    return builder
  # Runs started side by side on one data_dir would both generate and then race to rename their
  # finished copies into place; the second one crashed. One prepares, the others wait and reuse.
  with prepare_lock(data_dir, name):
    builder = _builder(name, data_dir, builder_kwargs)  # what another process may have written
    if not builder.is_prepared():
      builder.download_and_prepare(
          download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  return builder


@contextlib.contextmanager
def prepare_lock(data_dir: str, name: str) -> Iterator[None]:
  """An exclusive lock on data_dir/name for this machine's processes (a no-op on gs:// etc.)."""
  if "://" in os.fspath(data_dir):
    yield
    return
  os.makedirs(os.path.join(data_dir, name), exist_ok=True)
  with open(os.path.join(data_dir, name, ".prepare.lock"), "w") as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def _prepare_hint(name: str, data_dir: str, builder_kwargs: dict[str, Any]) -> str:
  if name in EMBEDDED:
    args = "".join(f", {k}={v!r}" for k, v in builder_kwargs.items())
    return (f"run infini_jax.data.prepare({name!r}, {str(data_dir)!r}{args}) "
            "(the trainer does this for the embedded datasets)")
  return "on a machine with TensorFlow and internet access run: " + _PG19_COMMAND.format(
      data_dir=data_dir)


def prepared_builder(name: str, data_dir: str, **builder_kwargs: Any) -> tfds.core.DatasetBuilder:
  """The builder of a prepared dataset; a one-line error naming the fix if it is not prepared."""
  check_name(name)
  not_prepared = FileNotFoundError(
      f"dataset {name!r} is not prepared in {data_dir}: "
      + _prepare_hint(name, data_dir, builder_kwargs))
  if name in EMBEDDED:
    builder = _builder(name, data_dir, builder_kwargs)
    if not builder.is_prepared():
      raise not_prepared
    return builder
  root = epath.Path(data_dir) / name  # <name>/<version>/ or <name>/<config>/<version>/
  infos = [*root.glob("*/dataset_info.json"), *root.glob("*/*/dataset_info.json")]
  versions = sorted((tfds.core.Version(p.parent.name), p.parent) for p in infos
                    if tfds.core.Version.is_valid(p.parent.name))
  if not versions:
    raise not_prepared
  return tfds.builder_from_directory(versions[-1][1])  # The newest prepared version.


class Documents(Sequence[str]):
  """Random-access documents (str) of one split; `records[i]` is the full stored example."""

  def __init__(self, records: Sequence[dict[str, Any]], feature: str, description: str):
    self.records = records
    self._feature = feature
    self._description = description

  def __len__(self) -> int:
    return len(self.records)

  def __getitem__(self, index: int) -> str:  # type: ignore[override]
    if not -len(self) <= index < len(self):
      raise IndexError(f"document {index} out of range for {len(self)} documents")
    text = self.records[index][self._feature]
    return text.decode("utf-8", errors="replace") if isinstance(text, bytes) else text

  def __repr__(self) -> str:
    return f"Documents({self._description}, {len(self)} documents)"


def load_source(name: str, split: str, data_dir: str, **builder_kwargs: Any) -> Documents:
  """The documents of a prepared dataset's split, as random-access strings."""
  builder = prepared_builder(name, data_dir, **builder_kwargs)
  available = sorted(builder.info.splits)
  if split not in available:
    sizes = ", ".join(f"{s}: {builder.info.splits[s].num_examples}" for s in available)
    raise ValueError(f"{name} has no {split!r} split in {builder.data_dir} (its splits: {sizes}); "
                     "a corpus of few files can leave a split empty: add files or pick another")
  feature = CATALOG_TEXT_FEATURE.get(name, "text")
  return Documents(builder.as_data_source(split), feature, f"{name}/{split}")


def dataset_python_version(data_dir: str, config: str = "stdlib") -> str:
  """The Python version whose standard library a prepared python_code dataset holds."""
  builder = prepared_builder("python_code", data_dir, config=config)
  return builder.info.metadata["python_version"]
