"""Tokenizers: raw bytes (the default, nothing to train) and SentencePiece (trained from a corpus).

Both expose the same small surface the pipeline, trainer and evaluators rely on: `encode` (no
BOS/EOS), `encode_array` (the same ids as an int32 array, the fast path for whole documents),
`decode` (special ids skipped, invalid UTF-8 replaced) and the ids `pad_id`, `bos_id`, `eos_id`
inside `vocab_size`. Padding needs a real id because batches are dense arrays; SentencePiece
models trained here reserve one, and a model without one gets an extra id past its pieces.

Train a SentencePiece model from a prepared dataset's train split:

    python -m infini_jax.data.tokenizer train --dataset=python_code --vocab_size=8192 \\
        --data_dir=data/tfds --out=data/spm/python_code_8k.model
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from typing import Protocol

import numpy as np

_TRAIN_COMMAND = (
    "python -m infini_jax.data.tokenizer train --dataset=NAME --vocab_size=N --out={path}"
)


class Tokenizer(Protocol):
  """What every tokenizer offers (ByteTokenizer, SentencePieceTokenizer)."""

  vocab_size: int
  pad_id: int
  bos_id: int
  eos_id: int

  def encode(self, text: str) -> list[int]: ...

  def encode_array(self, text: str) -> np.ndarray: ...

  def decode(self, ids: Sequence[int] | np.ndarray) -> str: ...

  @property
  def fingerprint(self) -> str: ...


class ByteTokenizer:
  """UTF-8 bytes as ids 0..255, then PAD=256, BOS=257, EOS=258 (vocab_size 259)."""

  PAD_ID = 256
  BOS_ID = 257
  EOS_ID = 258

  vocab_size = 259
  pad_id = PAD_ID
  bos_id = BOS_ID
  eos_id = EOS_ID
  fingerprint = "byte"

  def encode(self, text: str) -> list[int]:
    return list(text.encode("utf-8"))

  def encode_array(self, text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int32)

  def decode(self, ids: Sequence[int] | np.ndarray) -> str:
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    return ids[ids < 256].astype(np.uint8).tobytes().decode("utf-8", errors="replace")

  def __repr__(self) -> str:
    return "ByteTokenizer()"


class SentencePieceTokenizer:
  """A SentencePiece model file; pad/bos/eos missing from the model get ids past its pieces."""

  def __init__(self, path: str | os.PathLike[str]):
    path = os.fspath(path)
    if not os.path.isfile(path):
      raise FileNotFoundError(
          f"SentencePiece model {path!r} does not exist; create it with: "
          + _TRAIN_COMMAND.format(path=path)
      )
    import sentencepiece as spm  # Imported here: byte-level runs never need it.

    self.path = path
    with open(path, "rb") as f:
      proto = f.read()
    self._sp = spm.SentencePieceProcessor(model_proto=proto)
    self._fingerprint = "spm-" + hashlib.sha1(proto).hexdigest()[:12]
    self._num_pieces = self._sp.get_piece_size()
    extra = self._num_pieces
    ids = {}
    for name, got in (("pad", self._sp.pad_id()), ("bos", self._sp.bos_id()),
                      ("eos", self._sp.eos_id())):
      if got < 0:  # The model was trained without this special piece.
        got, extra = extra, extra + 1
      ids[name] = got
    self.pad_id, self.bos_id, self.eos_id = ids["pad"], ids["bos"], ids["eos"]
    self.vocab_size = extra
    self._special = np.array(sorted({self.pad_id, self.bos_id, self.eos_id}), dtype=np.int64)

  @property
  def fingerprint(self) -> str:
    return self._fingerprint

  def encode(self, text: str) -> list[int]:
    return self._sp.encode(text)

  def encode_array(self, text: str) -> np.ndarray:
    return np.asarray(self._sp.encode(text), dtype=np.int32)

  def decode(self, ids: Sequence[int] | np.ndarray) -> str:
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    keep = (ids < self._num_pieces) & ~np.isin(ids, self._special)
    return self._sp.decode([int(i) for i in ids[keep]])

  def __repr__(self) -> str:
    return f"SentencePieceTokenizer({self.path!r})"


def get_tokenizer(name_or_path: str) -> ByteTokenizer | SentencePieceTokenizer:
  """"byte" -> ByteTokenizer; a path ending in .model -> SentencePieceTokenizer."""
  if name_or_path == "byte":
    return ByteTokenizer()
  if str(name_or_path).endswith(".model"):
    return SentencePieceTokenizer(name_or_path)
  raise ValueError(
      f"unknown tokenizer {name_or_path!r}: use 'byte' or the path of a SentencePiece "
      "'.model' file (train one with: " + _TRAIN_COMMAND.format(path="PATH.model") + ")"
  )


def _lines(documents: Iterable[str], max_line_bytes: int) -> Iterator[str]:
  """SentencePiece trains on sentences of bounded size, so documents are fed line by line."""
  for doc in documents:
    for line in doc.split("\n"):
      if line.strip() and len(line) <= max_line_bytes:
        yield line


def train_sentencepiece(
    documents: Iterable[str],
    vocab_size: int,
    out: str | os.PathLike[str],
    *,
    model_type: str = "bpe",
    max_lines: int = 2_000_000,
) -> SentencePieceTokenizer:
  """Trains a lossless SentencePiece model (`out` ends in .model) and returns its tokenizer.

  Lossless on any text: identity normalisation, whitespace kept as is (code indentation),
  and bytes as fallback pieces for characters (newlines included) the vocabulary lacks, so
  `decode(encode(text)) == text`. Ids: pad 0, unk 1, bos 2, eos 3. The vocabulary must hold
  the 256 byte pieces plus the corpus' distinct characters; SentencePiece names the minimum
  when it is too small.
  """
  import sentencepiece as spm

  out = os.fspath(out)
  if not out.endswith(".model"):
    raise ValueError(f"--out must end in '.model', got {out!r}")
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  max_line_bytes = 4096
  spm.SentencePieceTrainer.train(
      sentence_iterator=_lines(documents, max_line_bytes),
      model_prefix=out[: -len(".model")],
      vocab_size=vocab_size,
      model_type=model_type,
      character_coverage=1.0,
      byte_fallback=True,
      normalization_rule_name="identity",
      remove_extra_whitespaces=False,
      add_dummy_prefix=False,
      allow_whitespace_only_pieces=True,
      split_digits=True,
      hard_vocab_limit=False,
      max_sentence_length=max_line_bytes,
      input_sentence_size=max_lines,
      shuffle_input_sentence=True,
      pad_id=0, unk_id=1, bos_id=2, eos_id=3,
      num_threads=os.cpu_count() or 1,
      minloglevel=2,
  )
  return SentencePieceTokenizer(out)


def _main(argv: Sequence[str], flag_values=None) -> None:
  """`python -m infini_jax.data.tokenizer train --dataset=... --vocab_size=N --out=PATH`: argv as
  absl leaves it (the program, then `train`), the flags parsed into flag_values (absl's FLAGS)."""
  from absl import app, flags  # noqa: PLC0415 (the library itself needs no absl)

  if list(argv[1:]) != ["train"]:
    raise app.UsageError(f"expected the command 'train', got {argv[1:]}: "
                         "python -m infini_jax.data.tokenizer train --dataset=... --out=...")
  args = flags.FLAGS if flag_values is None else flag_values
  from infini_jax.data import sources  # Deferred: TFDS import is only needed for training.

  kwargs = {}
  if args.text_dir is not None:
    kwargs["text_glob"] = args.text_dir
  if args.config is not None:
    kwargs["config"] = args.config
  if args.dataset in sources.EMBEDDED:
    sources.prepare(args.dataset, args.data_dir, **kwargs)
  docs = sources.load_source(args.dataset, "train", args.data_dir, **kwargs)
  tok = train_sentencepiece(docs, args.vocab_size, args.out,
                            model_type=args.model_type, max_lines=args.max_lines)
  print(f"wrote {args.out}: vocab_size={tok.vocab_size} pad={tok.pad_id} bos={tok.bos_id} "
        f"eos={tok.eos_id}, trained on {len(docs)} {args.dataset} train documents")


def _define_flags(flag_values=None) -> None:
  """The command's flags, defined in flag_values (absl's FLAGS): not at import, where they would
  clash with the entry points' own."""
  from absl import flags  # noqa: PLC0415

  fv = flags.FLAGS if flag_values is None else flag_values  # an empty FlagValues is falsy
  for define, name, default, help_ in (
      (flags.DEFINE_string, "dataset", None, "Source of the training text: python_code, "
       "text_files, passkey or pg19."),
      (flags.DEFINE_string, "data_dir", "data/tfds", "The TFDS folder the dataset is read from."),
      (flags.DEFINE_string, "text_dir", None, "Folder or glob of UTF-8 files (for "
       "--dataset=text_files)."),
      (flags.DEFINE_string, "config", None, "Builder config, e.g. 'small' for a subset of "
       "python_code."),
      (flags.DEFINE_integer, "vocab_size", None, "Size of the vocabulary, special ids included."),
      (flags.DEFINE_integer, "max_lines", 2_000_000, "Lines sampled from the corpus to train on."),
      (flags.DEFINE_string, "out", None, "Output path of the model, ending in .model.")):
    define(name, default, help_, flag_values=fv)
  flags.DEFINE_enum("model_type", "bpe", ["bpe", "unigram"], "SentencePiece's model type.",
                    flag_values=fv)
  flags.mark_flags_as_required(["dataset", "vocab_size", "out"], flag_values=fv)


def _run(argv: Sequence[str]) -> None:
  try:
    _main(argv)
  except (ValueError, FileNotFoundError) as e:
    sys.exit(f"error: {e}")


if __name__ == "__main__":
  from absl import app

  _define_flags()
  app.run(_run)
