"""`text_files`: any folder or glob of UTF-8 text files as a corpus, one document per file.

Also the base of `python_code`: both are "a list of files, each a long document", written as
array_record so reading needs no TensorFlow. A file's split is a pure function of its path
relative to the corpus root (sha1 bucket: 90% train, 5% validation, 5% test), so it does not
change when files are added or removed, or across machines. A split that gets no file (a corpus
of a handful of files) is not written; asking for it names the sizes of the others.

Each distinct glob is its own builder config (named by a hash of the absolute pattern), so
several corpora share one data_dir. Files that change after preparing are not noticed: prepare
into a fresh data_dir (or delete text_files/<config>) to rebuild.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import os
from collections.abc import Iterator, Sequence

import tensorflow_datasets as tfds

from infini_jax.data.local_builder import LocalBuilder

SPLITS = ("train", "validation", "test")
_SPLIT_PERCENT = {"train": 90, "validation": 5, "test": 5}


def split_of(relative_path: str) -> str:
  """The split of a document from a sha1 bucket of its relative path (~90/5/5)."""
  bucket = int(hashlib.sha1(relative_path.encode("utf-8")).hexdigest()[:8], 16) % 100
  edge = 0
  for split in SPLITS:
    edge += _SPLIT_PERCENT[split]
    if bucket < edge:
      return split
  raise AssertionError("split percentages must sum to 100")


def _has_magic(part: str) -> bool:
  return any(c in part for c in "*?[")


def expand_text_glob(text_glob: str) -> tuple[str, list[str]]:
  """(root, sorted files) of a folder (every file below it) or a glob (`**` recursive).

  The root (the folder, or the glob's directory before its first wildcard) is what relative
  paths, and so splits, are measured from.
  """
  pattern = os.path.abspath(os.path.expanduser(text_glob))
  if os.path.isdir(pattern):
    root = pattern
    files = [os.path.join(d, f) for d, _, names in os.walk(root) for f in names]
  else:
    parts = pattern.split(os.sep)
    fixed = []
    for part in parts:
      if _has_magic(part):
        break
      fixed.append(part)
    root = os.sep.join(fixed[:-1] if len(fixed) == len(parts) else fixed) or os.sep
    files = glob.glob(pattern, recursive=True)
  files = sorted(f for f in files if os.path.isfile(f))
  if not files:
    raise ValueError(
        f"no files match {text_glob!r}: point text_glob at a folder of UTF-8 text files or a "
        "glob such as 'corpus/**/*.txt'")
  return root, files


def read_text_file(path: str) -> str:
  with open(path, "rb") as f:
    data = f.read()
  try:
    return data.decode("utf-8")
  except UnicodeDecodeError as e:
    raise ValueError(
        f"{path} is not UTF-8 text ({e.reason} at byte {e.start}): narrow the glob to text "
        "files, e.g. 'corpus/**/*.txt'") from None


class FileCorpusBuilder(LocalBuilder, skip_registration=True):
  """One document per file; subclasses say which files (`_files`) and how to read one."""

  VERSION = tfds.core.Version("1.0.0")

  def _files(self) -> tuple[str, list[str]]:
    """(root, files) of the corpus."""
    raise NotImplementedError

  def _read(self, path: str) -> str:
    return read_text_file(path)

  def _metadata(self) -> dict[str, str]:
    return {}

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=self.__doc__,
        features=tfds.features.FeaturesDict({
            "text": tfds.features.Text(),
            "path": tfds.features.Text(),
        }),
        metadata=tfds.core.MetadataDict(self._metadata()),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download: the files are local.
    root, files = self._files()
    by_split: dict[str, list[tuple[str, str]]] = {s: [] for s in SPLITS}
    for path in files:
      rel = os.path.relpath(path, root).replace(os.sep, "/")
      by_split[split_of(rel)].append((rel, path))
    return {s: self._generate_examples(pairs) for s, pairs in by_split.items() if pairs}

  def _generate_examples(self, pairs: Sequence[tuple[str, str]]) -> Iterator[tuple[str, dict]]:
    for rel, path in pairs:
      yield rel, {"text": self._read(path), "path": rel}


@dataclasses.dataclass
class TextFilesConfig(tfds.core.BuilderConfig):
  """text_glob: a folder (all files below it) or a glob of UTF-8 text files."""

  text_glob: str = ""


def text_files_config(text_glob: str) -> TextFilesConfig:
  if not text_glob:
    raise ValueError("text_files needs a folder or glob of UTF-8 text files: set "
                     "config.data.text_glob (or --text_dir for the tokenizer CLI)")
  pattern = os.path.abspath(os.path.expanduser(text_glob))
  name = "glob_" + hashlib.sha1(pattern.encode("utf-8")).hexdigest()[:12]
  return TextFilesConfig(name=name, text_glob=pattern, description=f"files of {pattern}")


class TextFiles(FileCorpusBuilder, skip_registration=True):
  """A folder or glob of UTF-8 text files, one document per file, split by a hash of the path."""

  name = "text_files"

  def _files(self) -> tuple[str, list[str]]:
    return expand_text_glob(self.builder_config.text_glob)

  def _metadata(self) -> dict[str, str]:
    return {"text_glob": self.builder_config.text_glob}
