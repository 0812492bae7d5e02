"""BookSum (Kryściński et al. 2021), the paper's Table 4: book text, a separator, its summary.

The public release read from files on disk (nothing is downloaded), one file per split, the split
named in the file name (`train`, `val`/`validation`, `test`), in the formats it ships:
- JSON lines (`.jsonl`, `.json`: one object a line), e.g. ubaada/booksum-complete-cleaned's
  `chapters/train.jsonl` (`text`, and `summary`: a list of {source, text, analysis});
- parquet (`.parquet`), e.g. kmfoda/booksum's chapter level (`chapter`, `summary_text`).
The book is the first of TEXT_FIELDS a row has, the summary the first of SUMMARY_FIELDS (a list
of summaries gives its first; a summary given as a dict gives its `text`); `text_field` and
`summary_field` name others. Rows with an empty book or summary are left out.

A document is `book + SEPARATOR + summary`, so every corpus reader (perplexity, a tokenizer's
training) sees the pair as one text. Fine-tuning weighs the summary alone (`tokenize`): its
targets and the EOS weigh 1, the book and the separator 0, and a book too long for the training
window keeps its last tokens, so that each example is one window whose every target is seen
with the book before it. The `summarise` evaluator (infini_jax/summarise.py) feeds `prompt`.

    python -m infini_jax.data.booksum --files='/data/booksum/chapters/*.jsonl' \
        --data_dir=data/tfds [--text_field=chapter --summary_field=summary_text]
    python -m infini_jax.data.booksum --synthetic=200 --files=data/booksum_synthetic \
        --data_dir=data/tfds     # the runlocal set: made-up stories, then prepared

`synthetic`: stories of events among filler sentences, each summarised by its events in order
(`write_synthetic`), so that a summary can be derived from the book alone: a self-made stand-in
for laptops and CI, written as the same JSON lines the release is read from.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from infini_jax.data import text_files
from infini_jax.data.local_builder import LocalBuilder
from infini_jax.data.tokenizer import Tokenizer

TEXT_FIELDS = ("chapter", "text", "book_text", "document")
SUMMARY_FIELDS = ("summary_text", "summary")
SEPARATOR = "\n\nSUMMARY:\n"
SUFFIXES = (".jsonl", ".json", ".parquet")
# (split, the word in a file name that names it): "val" also matches "validation".
SPLIT_WORDS = (("train", "train"), ("validation", "val"), ("test", "test"))


def split_of_file(path: str) -> str:
  name = os.path.basename(path).lower()
  for split, word in SPLIT_WORDS:
    if word in name:
      return split
  raise ValueError(f"cannot tell the split of {path}: name each BookSum file after its split "
                   "(train, val or test), e.g. chapters/train.jsonl, or narrow --files to them")


def read_rows(path: str, columns: Sequence[str] | None = None) -> Iterator[dict[str, Any]]:
  """The rows of a JSON-lines or parquet file as dicts (parquet: only `columns` when given)."""
  if path.endswith(".parquet"):
    import pyarrow.parquet as pq  # noqa: PLC0415 (only parquet readers pay for pyarrow)

    file = pq.ParquetFile(path)
    names = file.schema_arrow.names
    wanted = [c for c in columns if c in names] if columns else None
    for batch in file.iter_batches(batch_size=64, columns=wanted or None):
      yield from batch.to_pylist()
  elif path.endswith((".jsonl", ".json")):
    with open(path, encoding="utf-8") as f:
      for number, line in enumerate(f, 1):
        if line.strip():
          try:
            yield json.loads(line)
          except json.JSONDecodeError as e:
            raise ValueError(f"{path} line {number} is not JSON ({e.msg}): BookSum files are "
                             "JSON lines, one object a line") from None
  else:
    raise ValueError(f"{path}: BookSum files must be JSON lines or parquet ({', '.join(SUFFIXES)})")


def _summary_text(value: Any) -> str:
  """A summary as the release stores it: a string, a list of summaries (the first), a dict."""
  if isinstance(value, (list, tuple)):
    return _summary_text(value[0]) if value else ""
  if isinstance(value, dict):
    return str(value.get("text") or value.get("summary_text") or "")
  return "" if value is None else str(value)


def _field(row: dict, names: Sequence[str], where: str, what: str, flag: str) -> Any:
  for name in names:
    if name in row:
      return row[name]
  raise ValueError(f"{where} has no {what} field (looked for {', '.join(names)}; it has "
                   f"{', '.join(sorted(row)[:12])}): pass --{flag}=NAME (data.booksum_{flag})")


def example(row: dict, where: str, text_field: str = "",
            summary_field: str = "") -> tuple[str, str]:
  """(book, summary) of one row of the release."""
  book = _field(row, (text_field,) if text_field else TEXT_FIELDS, where, "book text",
                "text_field")
  summary = _field(row, (summary_field,) if summary_field else SUMMARY_FIELDS, where, "summary",
                   "summary_field")
  return ("" if book is None else str(book)), _summary_text(summary)


def release_files(pattern: str) -> dict[str, list[str]]:
  """split -> the release's files of a folder or glob (JSON lines and parquet only)."""
  _, files = text_files.expand_text_glob(pattern)
  by_split: dict[str, list[str]] = {}
  for path in files:
    if path.endswith(SUFFIXES):
      by_split.setdefault(split_of_file(path), []).append(path)
  if not by_split:
    raise ValueError(f"no BookSum files ({', '.join(SUFFIXES)}) in {pattern!r}: point "
                     "data.text_glob (--files) at the release's JSON lines or parquet files")
  return by_split


@dataclasses.dataclass
class BookSumConfig(tfds.core.BuilderConfig):
  files: str = ""  # a folder or glob of the release's files
  text_field: str = ""  # "": the first of TEXT_FIELDS
  summary_field: str = ""  # "": the first of SUMMARY_FIELDS


def booksum_config(text_glob: str, text_field: str = "", summary_field: str = "") -> BookSumConfig:
  """A config named by its files and fields, so that several releases share a data_dir."""
  if not text_glob:
    raise ValueError("booksum needs the release's files: set data.text_glob (--files) to a "
                     "folder or glob of JSON lines or parquet files, one per split")
  pattern = os.path.abspath(os.path.expanduser(text_glob))
  key = json.dumps([pattern, text_field, summary_field, SEPARATOR])
  return BookSumConfig(name="files_" + hashlib.sha1(key.encode()).hexdigest()[:12],
                       description=f"BookSum from {pattern}", files=pattern,
                       text_field=text_field, summary_field=summary_field)


class BookSum(LocalBuilder, skip_registration=True):
  """BookSum pairs from local files: text = book + SEPARATOR + summary (see booksum.py)."""

  name = "booksum"
  VERSION = tfds.core.Version("1.0.0")
  BUILDER_CONFIGS = [BookSumConfig(name="default")]

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self, description=self.__doc__,
        features=tfds.features.FeaturesDict({
            "text": tfds.features.Text(), "book": tfds.features.Text(),
            "summary": tfds.features.Text(), "id": tfds.features.Text()}),
        metadata=tfds.core.MetadataDict({"files": self.builder_config.files,
                                         "separator": SEPARATOR}))

  def _split_generators(self, dl_manager):
    del dl_manager  # Local files: nothing to download.
    return {split: self._generate_examples(files)
            for split, files in release_files(self.builder_config.files).items()}

  def _generate_examples(self, files: Sequence[str]) -> Iterator[tuple[str, dict]]:
    cfg = self.builder_config
    columns = [*((cfg.text_field,) if cfg.text_field else TEXT_FIELDS),
               *((cfg.summary_field,) if cfg.summary_field else SUMMARY_FIELDS)]
    for path in files:  # keys by path: books/train.jsonl and chapters/train.jsonl may meet
      for i, row in enumerate(read_rows(path, columns)):
        book, summary = example(row, f"{path} row {i}", cfg.text_field, cfg.summary_field)
        if book.strip() and summary.strip():
          key = f"{path}-{i:07d}"
          yield key, {"text": book + SEPARATOR + summary, "book": book, "summary": summary,
                      "id": key}


def source(text_glob: str = "", text_field: str = "", summary_field: str = "",
           synthetic: int = 0) -> tuple[type, dict[str, Any]]:
  """sources.EMBEDDED's entry: (builder class, its kwargs); `synthetic` > 0 first writes that
  many made-up training stories into the folder text_glob (once)."""
  if synthetic:
    write_synthetic(text_glob, synthetic)
  return BookSum, {"config": booksum_config(text_glob, text_field, summary_field)}


def builder_kwargs(data_cfg, seq_len: int | None = None) -> dict[str, Any]:
  del seq_len
  return {"text_glob": data_cfg.get("text_glob", ""),
          "text_field": data_cfg.get("booksum_text_field", ""),
          "summary_field": data_cfg.get("booksum_summary_field", ""),
          "synthetic": int(data_cfg.get("booksum_synthetic", 0))}


def text_of(value: Any) -> str:
  """A stored Text feature (bytes from the array_record reader) as str."""
  return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)


def prompt(book: str, tokenizer: Tokenizer, max_tokens: int = 0) -> np.ndarray:
  """[BOS] + the book (its first max_tokens tokens; 0: all) + SEPARATOR: int32, what the model
  continues with a summary, as `tokenize` laid the examples out in fine-tuning."""
  ids = tokenizer.encode_array(book)
  ids = ids[:max_tokens] if max_tokens else ids
  return np.concatenate([[tokenizer.bos_id], ids, tokenizer.encode_array(SEPARATOR)]).astype(
      np.int32)


def tokenize(records: Sequence[dict], tokenizer: Tokenizer, seq_len: int,
             summary_only: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(tokens [total], offsets [D + 1], weights [total] uint8: each token's loss weight as a
  target) of `[BOS] + book + SEPARATOR + summary + [EOS]` per record.

  summary_only: the summary's tokens and the EOS weigh 1, the rest 0, and the book keeps only
  its last tokens so that the example's L - 1 targets fit one window of seq_len. Otherwise every
  token weighs 1 and the book is whole (plain language modelling on the pairs).
  """
  dtype = np.uint16 if tokenizer.vocab_size <= 2**16 else np.int32
  sep = tokenizer.encode_array(SEPARATOR)
  tokens, weights, lengths = [], [], []
  for record in records:
    book = tokenizer.encode_array(text_of(record["book"]))
    summary = tokenizer.encode_array(text_of(record["summary"]))
    if summary_only:
      keep = max(seq_len + 1 - 2 - len(sep) - len(summary), 0)
      book = book[len(book) - keep:] if keep else book[:0]
    head = np.concatenate([[tokenizer.bos_id], book, sep])
    tail = np.concatenate([summary, [tokenizer.eos_id]])
    tokens += [head, tail]
    weights += [np.full(len(head), 0 if summary_only else 1, np.uint8),
                np.ones(len(tail), np.uint8)]
    lengths.append(len(head) + len(tail))
  offsets = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])
  if not tokens:
    return np.zeros(0, dtype), offsets, np.zeros(0, np.uint8)
  return np.concatenate(tokens).astype(dtype), offsets, np.concatenate(weights)


# --- The synthetic set (runlocal, CI) -------------------------------------------------------

NAMES = ("Anna", "Ben", "Clara", "David", "Ella", "Finn", "Grace", "Hugo")
DEEDS = ("found a key", "lost a map", "met a fox", "crossed a river", "lit a fire",
         "climbed a hill", "sold a horse", "wrote a letter", "baked bread", "caught a fish")
PLACES = ("in the forest", "at the market", "by the sea", "in the old house", "on the bridge",
          "near the mill")
FILLER = ("The wind was cold.", "Nothing happened for a while.", "Birds sang in the trees.",
          "The road went on.", "Rain fell on the roofs.", "The day grew long.")


def synthetic_story(rng: np.random.Generator, events: int = 4,
                    filler: tuple[int, int] = (3, 8)) -> tuple[str, str]:
  """(book, summary): `events` events, each after a few filler sentences; the summary is the
  events in the order the book tells them."""
  told, sentences = [], []
  for _ in range(events):
    sentences += [FILLER[i] for i in rng.integers(len(FILLER), size=rng.integers(*filler))]
    event = (f"{NAMES[rng.integers(len(NAMES))]} {DEEDS[rng.integers(len(DEEDS))]} "
             f"{PLACES[rng.integers(len(PLACES))]}.")
    told.append(event)
    sentences.append(event)
  sentences += [FILLER[i] for i in rng.integers(len(FILLER), size=rng.integers(*filler))]
  return " ".join(sentences), " ".join(told)


def write_synthetic(folder: str, train: int, eval_examples: int = 0, seed: int = 0) -> list[str]:
  """Writes train.jsonl (`train` stories), validation.jsonl and test.jsonl (`eval_examples`
  each, default train // 10 + 2) into folder, with the release's chapter-level fields; a split
  already written is kept. Deterministic in seed. -> the paths."""
  if not folder:
    raise ValueError("the synthetic BookSum set needs a folder: set data.text_glob (--files)")
  os.makedirs(folder, exist_ok=True)
  sizes = {"train": train, "validation": eval_examples or train // 10 + 2}
  sizes["test"] = sizes["validation"]
  paths = []
  for stream, (split, count) in enumerate(sizes.items()):
    path = os.path.join(folder, f"{split}.jsonl")
    paths.append(path)
    if os.path.exists(path):
      continue
    rng = np.random.default_rng([seed, stream])
    with open(path + ".tmp", "w", encoding="utf-8") as f:
      for i in range(count):
        book, summary = synthetic_story(rng)
        f.write(json.dumps({"bid": f"{split}-{i}", "chapter": book, "summary_text": summary})
                + "\n")
    os.replace(path + ".tmp", path)  # a reader never sees half a file
  return paths


def _main(argv: Sequence[str]) -> None:
  from absl import flags  # noqa: PLC0415 (the CLI's flags are defined only when run as one)

  from infini_jax.data import sources  # noqa: PLC0415 (sources imports this module)

  del argv
  f = flags.FLAGS
  if f.synthetic:
    write_synthetic(f.files, f.synthetic)
  builder = sources.prepare("booksum", f.data_dir, text_glob=f.files, text_field=f.text_field,
                            summary_field=f.summary_field)
  for split, info in sorted(builder.info.splits.items()):
    print(f"booksum {split}: {info.num_examples} pairs")
  print(f"prepared in {builder.data_dir}: train with data.name=booksum "
        f"data.text_glob={f.files!r} data.data_dir={f.data_dir!r}")


if __name__ == "__main__":
  from absl import app, flags

  flags.DEFINE_string("files", None, "A folder or glob of the release's .jsonl/.parquet files, "
                      "one per split named in the file name (train, val, test).")
  flags.DEFINE_string("data_dir", "data/tfds", "The TFDS data directory to prepare into.")
  flags.DEFINE_string("text_field", "", f"The book's field (default: the first of {TEXT_FIELDS}).")
  flags.DEFINE_string("summary_field", "",
                      f"The summary's field (default: the first of {SUMMARY_FIELDS}).")
  flags.DEFINE_integer("synthetic", 0, "Write this many made-up training stories (and a tenth "
                       "as many for validation and test) into the folder --files first.")
  flags.mark_flag_as_required("files")
  app.run(_main)
