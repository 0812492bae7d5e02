"""grain pipelines: training windows (shuffled, batched, sharded per process) and eval documents.

Training. Each document becomes `[BOS] + tokens + [EOS]` (L tokens, L - 1 targets) and is cut
into windows of the training length T so that every target is predicted exactly once:

    window w: inputs = toks[w*T : w*T + T], targets = toks[w*T + 1 : w*T + T + 1]

Each target also gets a loss weight ("weights", float32): 0 on padding, 1 on real targets, except
the last `answer_tokens` targets before each document's EOS, which weigh `answer_weight` (a
passkey document ends in its answer: data.answer_weight up-weights retrieval in the loss).

The last window's short tail is padded (PAD, mask False) and never glued to the next document,
so the model's memory never carries across documents. The corpus is tokenized once, at prepare
time, into token records (`tokens.py`: per-document array_record chunks beside the dataset);
the window list (document, start) is a function of the document lengths alone (O(documents)),
and windows are read lazily from the records inside a grain `MapDataset`, so any batch of any
epoch is random access, and neither the start-up time nor the memory grows with the corpus:

    range(windows).shuffle(seed).repeat(epochs)[: whole global batches]
      .batch(local rows)[process_index::process_count].map(read windows) -> to_iter_dataset

Consecutive groups of `local = global / process_count` shuffled windows, dealt round-robin to the
processes: process p's k-th batch is rows p*local:(p+1)*local of the k-th global batch a single
process would see. The iterator is a grain `DatasetIterator`; its state is
`it.get_state() == {"next_index": k}` (JSON-able), and `it.set_state(state)` on a pipeline built
with the same arguments resumes with exactly the batches the uninterrupted one would have given.
Save it with orbax as `grain.checkpoint.CheckpointSave(it)` (restore: `CheckpointRestore(it)`), or
store the dict in the checkpoint's JSON metadata.

Reading a window is one or two 128 KiB record reads and a copy (tens of microseconds), so one
prefetch thread keeps far ahead of training: grain's worker processes would cost more than the
map they spread (bench/data.py measures it).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Iterator, Sequence
from typing import Any

import grain
import numpy as np
from ml_collections import ConfigDict

from infini_jax.data import booksum, passkey, sources, tokens
from infini_jax.data.tokenizer import Tokenizer, get_tokenizer


@dataclasses.dataclass(frozen=True)
class TokenizedCorpus:
  """Documents as `[BOS] + tokens + [EOS]`, concatenated: document i is
  tokens[offsets[i]:offsets[i + 1]]."""

  tokens: np.ndarray  # [total] uint16 when the vocabulary fits (half the memory), else int32
  offsets: np.ndarray  # [num_documents + 1] int64
  weights: np.ndarray | None = None  # [total] float32: each token's weight as a target
  # [total] each token's loss weight as a target, when the dataset sets them (booksum: the
  # summary alone); None: every target weighs 1 (answer_weight aside).
  weights: np.ndarray | None = None

  @property
  def lengths(self) -> np.ndarray:
    return np.diff(self.offsets)

  def __len__(self) -> int:
    return len(self.offsets) - 1

  def document(self, i: int) -> np.ndarray:
    return self.tokens[self.offsets[i]:self.offsets[i + 1]].astype(np.int32)

  def read(self, doc: int, lo: int, hi: int) -> np.ndarray:
    """Document doc's ids [lo, hi), as `tokens.TokenRecords.read`."""
    return self.tokens[self.offsets[doc] + lo:self.offsets[doc] + hi]


def tokenize_corpus(documents: Sequence[str], tokenizer: Tokenizer) -> TokenizedCorpus:
  """Documents tokenized in memory (tests, small corpora; runs read prepared token records)."""
  dtype = tokens.token_dtype(tokenizer)
  pieces = [tokens.document_ids(tokenizer, text, dtype) for text in documents]
  lengths = np.array([len(p) for p in pieces], np.int64)
  offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
  flat = np.concatenate(pieces) if pieces else np.zeros(0, dtype)
  return TokenizedCorpus(flat, offsets)


class Windows:
  """Window w -> (document, first input position), from the lengths alone: O(documents) memory.

  Document d (L tokens, L - 1 targets) has ceil((L - 1) / T) windows, numbered in document order.
  `windows[ids]` is int64 [len(ids), 2], like `window_index(lengths, T)[ids]`.
  """

  def __init__(self, lengths: np.ndarray, seq_len: int):
    lengths = np.asarray(lengths, np.int64)
    self.per_doc = (lengths - 1 + seq_len - 1) // seq_len  # [D] windows covering L - 1 targets
    self.ends = np.cumsum(self.per_doc)  # [D] one past each document's last window
    self.seq_len = seq_len

  def __len__(self) -> int:
    return int(self.ends[-1]) if len(self.ends) else 0

  def __getitem__(self, ids: np.ndarray) -> np.ndarray:
    ids = np.asarray(ids, np.int64)
    docs = np.searchsorted(self.ends, ids, side="right")
    starts = (ids - (self.ends[docs] - self.per_doc[docs])) * self.seq_len
    return np.stack([docs, starts], axis=-1)


def window_index(lengths: np.ndarray, seq_len: int) -> np.ndarray:
  """[W, 2] int64 (document, first input position) of every window; L - 1 targets per document."""
  windows = Windows(lengths, seq_len)
  return windows[np.arange(len(windows))]


class CutWindows:
  """[B] window ids -> {"inputs", "targets": int32 [B, T], "mask": bool [B, T],
  "weights": float32 [B, T]}.

  corpus: `.lengths` and `.read(doc, lo, hi)` (TokenizedCorpus or tokens.TokenRecords).
  """

  def __init__(self, corpus: TokenizedCorpus | tokens.TokenRecords, windows: Windows | np.ndarray,
               seq_len: int, pad_id: int, answer_tokens: int = 0, answer_weight: float = 1.0):
    self.corpus, self.windows, self.seq_len, self.pad_id = corpus, windows, seq_len, pad_id
    self.lengths = np.asarray(corpus.lengths)
    self.answer_tokens, self.answer_weight = answer_tokens, answer_weight

  def __call__(self, window_ids: np.ndarray) -> dict[str, np.ndarray]:
    rows, T = len(window_ids), self.seq_len
    inputs = np.full((rows, T), self.pad_id, np.int32)
    targets = np.full((rows, T), self.pad_id, np.int32)
    mask = np.zeros((rows, T), bool)
    weights = np.zeros((rows, T), np.float32)
    for r, (doc, start) in enumerate(self.windows[np.asarray(window_ids)]):
      length = int(self.lengths[doc])
      chunk = self.corpus.read(int(doc), int(start), min(start + T + 1, length))  # n + 1 ids
      n = len(chunk) - 1
      inputs[r, :n] = chunk[:-1]
      targets[r, :n] = chunk[1:]
      mask[r, :n] = True
      at = start + 1 + np.arange(n)  # where each target sits in its document; EOS at length - 1
      answer = (at >= length - 1 - self.answer_tokens) & (at < length - 1)
      weights[r, :n] = np.where(answer, self.answer_weight, 1.0)
      if isinstance(self.corpus, TokenizedCorpus) and self.corpus.weights is not None:
        first = self.corpus.offsets[doc] + start + 1  # BookSum: each target's own weight
        weights[r, :n] = self.corpus.weights[first:first + n]
    return {"inputs": inputs, "targets": targets, "mask": mask, "weights": weights}


def check_lengths(seq_len: int, segment_len: int) -> None:
  if seq_len <= 0 or segment_len <= 0:
    raise ValueError(f"training length {seq_len} and segment length {segment_len} must be > 0")
  if seq_len % segment_len:
    lower = max(seq_len // segment_len, 1) * segment_len
    raise ValueError(
        f"training length {seq_len} is not a multiple of the segment length {segment_len}: "
        f"pick seq_len = k * segment_len (e.g. {lower} or {lower + segment_len}), or a segment "
        f"length that divides {seq_len}")


def check_batch(global_batch_size: int, process_index: int, process_count: int) -> int:
  """The per-process batch size."""
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} must be in [0, process_count="
                     f"{process_count})")
  if global_batch_size < 1 or global_batch_size % process_count:
    raise ValueError(
        f"global batch size {global_batch_size} does not split over {process_count} processes: "
        f"use a positive multiple of {process_count}")
  return global_batch_size // process_count


def train_iterator(
    documents: Sequence[str] | tokens.TokenRecords | TokenizedCorpus,
    tokenizer: Tokenizer,
    seq_len: int,
    segment_len: int,
    global_batch_size: int,
    seed: int,
    *,
    process_index: int = 0,
    process_count: int = 1,
    num_epochs: int | None = None,
    read_options: grain.ReadOptions | None = None,
    answer_tokens: int = 0,
    answer_weight: float = 1.0,
) -> grain.DatasetIterator:
  """Training batches of this process from documents (see the module docstring).

  documents: prepared token records (what runs use), a tokenized corpus, or strings, tokenized
  here in memory (tests and small corpora). num_epochs None repeats forever (each epoch
  shuffled differently); a finite count ends the iterator after the last whole global batch.
  The last answer_tokens targets before each document's EOS weigh answer_weight in the loss.
  """
  check_lengths(seq_len, segment_len)
  local = check_batch(global_batch_size, process_index, process_count)
  corpus = (documents if isinstance(documents, (TokenizedCorpus, tokens.TokenRecords))
            else tokenize_corpus(documents, tokenizer))
  windows = Windows(corpus.lengths, seq_len)
  if len(windows) == 0:
    raise ValueError("no documents to train on: the training split is empty")
  ds = grain.MapDataset.range(len(windows)).shuffle(seed=seed).repeat(num_epochs)
  whole = len(ds) // global_batch_size * global_batch_size
  if whole == 0:
    raise ValueError(f"{len(windows)} windows x {num_epochs} epochs is less than one global "
                     f"batch of {global_batch_size}: use more epochs or a smaller batch")
  ds = ds[:whole].batch(local, drop_remainder=True)[process_index::process_count]
  ds = ds.map(CutWindows(corpus, windows, seq_len, tokenizer.pad_id, answer_tokens,
                         answer_weight))
  read_options = read_options or grain.ReadOptions(num_threads=1, prefetch_buffer_size=8)
  return iter(ds.to_iter_dataset(read_options))


def _tokenizer(tokenizer: Tokenizer | str) -> Tokenizer:
  return get_tokenizer(tokenizer) if isinstance(tokenizer, str) else tokenizer


def _passkey_kwargs(data_cfg: ConfigDict, seq_len: int | None) -> dict[str, Any]:
  digits = int(data_cfg.get("passkey_digits", 5))
  length = int(data_cfg.get("passkey_length", 0))
  if length <= 0:
    if seq_len is None:
      raise ValueError("passkey_length 0 means 'fit the training length': pass seq_len")
    # [BOS] + prompt + " " + answer + [EOS] has prompt + answer + 1 targets: one window.
    length = seq_len - len(get_tokenizer(data_cfg.tokenizer).encode(" " + "9" * digits)) - 1
  return {"length": length, "digits": digits,
          "position": str(data_cfg.get("passkey_position", "random")),
          "num_examples": int(data_cfg.get("passkey_examples", 1000)),
          "num_eval_examples": int(data_cfg.passkey_eval_examples),
          "seed": int(data_cfg.passkey_seed),
          "tokenizer": data_cfg.tokenizer,
          "jitter": int(data_cfg.get("passkey_jitter", 0)),
          # "text": filler from a text corpus's files of each split (passkey.py)
          "filler": str(data_cfg.get("passkey_filler", "repeat")),
          "filler_glob": str(data_cfg.get("passkey_filler_glob", ""))}


# Dataset name -> the builder arguments its data config fields name.
_CONFIG_TO_KWARGS = {
    "python_code": lambda cfg, seq_len: {"config": cfg.get("subset", "stdlib")},
    "text_files": lambda cfg, seq_len: {"text_glob": cfg.get("text_glob", "")},
    "passkey": _passkey_kwargs,
    "pg19": lambda cfg, seq_len: {},
    "booksum": booksum.builder_kwargs,
}


def builder_kwargs(data_cfg: ConfigDict, seq_len: int | None = None) -> dict[str, Any]:
  """The builder arguments a data config names (see `make_train_iterator` for the fields)."""
  sources.check_name(data_cfg.name)
  return _CONFIG_TO_KWARGS[data_cfg.name](data_cfg, seq_len)


def prepare_from_config(data_cfg: ConfigDict, seq_len: int | None = None,
                        workers: int | None = None) -> None:
  """Prepares the config's dataset (ours; pg19 must be built elsewhere) and tokenizes each of
  its splits into token records with data.tokenizer (a fast no-op once done).

  workers: tokenizer processes (default: all cores for splits of 64 MB or more). Multi-host:
  call it on one process per shared data_dir, then wait for it (a barrier), or give every host
  its own local data_dir. Raises if the split was tokenized by another tokenizer.
  """
  kwargs = builder_kwargs(data_cfg, seq_len)
  name, data_dir = data_cfg.name, data_cfg.data_dir
  if name in sources.EMBEDDED:
    sources.prepare(name, data_dir, **kwargs)
  builder = sources.prepared_builder(name, data_dir, **kwargs)
  for split in sorted(builder.info.splits):
    out = tokens.tokens_dir(builder.data_dir, data_cfg.tokenizer, split)
    if os.path.exists(os.path.join(out, "info.json")):
      tokens.TokenRecords(out, get_tokenizer(data_cfg.tokenizer))  # refuses another tokenizer
      continue
    with sources.prepare_lock(data_dir, name):  # one process tokenizes, the others reuse it
      tokens.prepare_tokens(
          functools.partial(sources.load_source, name, split, data_dir, **kwargs),
          data_cfg.tokenizer, out, num_bytes=int(builder.info.splits[split].num_bytes),
          workers=workers, description=f"{name}/{split}")


def open_tokens(data_cfg: ConfigDict, split: str, seq_len: int | None = None
                ) -> tokens.TokenRecords:
  """The prepared token records of a config's split; a one-line error naming the fix."""
  kwargs = builder_kwargs(data_cfg, seq_len)
  builder = sources.prepared_builder(data_cfg.name, data_cfg.data_dir, **kwargs)
  return _open_split(builder, split, data_cfg.tokenizer, get_tokenizer(data_cfg.tokenizer),
                     f"{data_cfg.name}/{split}")


def _open_split(builder, split: str, tokenizer_name: str, tokenizer: Tokenizer,
                what: str) -> tokens.TokenRecords:
  available = sorted(builder.info.splits)
  if split not in available:
    raise ValueError(f"{what}: no {split!r} split in {builder.data_dir} (its splits: "
                     f"{', '.join(available)}); a corpus of few files can leave a split empty: "
                     "add files or pick another")
  path = tokens.tokens_dir(builder.data_dir, tokenizer_name, split)
  if not os.path.exists(os.path.join(path, "info.json")):
    raise FileNotFoundError(
        f"{what} is not tokenized with {tokenizer_name!r} in {path}: run "
        "infini_jax.data.prepare_from_config(config.data, config.seq_len) once (the trainer "
        "does this at start)")
  return tokens.TokenRecords(path, tokenizer)


def make_train_iterator(
    data_cfg: ConfigDict,
    seq_len: int,
    segment_len: int,
    global_batch_size: int,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
) -> grain.DatasetIterator:
  """This process's training batches for a data config.

  data_cfg fields:
    name: "python_code" | "text_files" | "passkey" | "pg19" | "booksum".
    data_dir: TFDS data directory (prepare with `prepare_from_config` first).
    tokenizer: "byte" or the path of a SentencePiece .model file.
    train_split, eval_split: split names ("train", "validation", "test").
    subset: python_code only, "stdlib" (default) or "small".
    text_glob: text_files only, a folder or glob of UTF-8 text files.
    passkey_length: prompt tokens; 0 fits one document per training window.
    passkey_digits, passkey_position ("random", "start", "middle", "end" or a fraction),
    passkey_examples (train size), passkey_eval_examples, passkey_seed, passkey_jitter (each
    prompt up to that many tokens shorter, so the answer lands at any offset of a segment):
    passkey only.
    answer_weight: passkey only, the loss weight of the answer's digits (default 1).
    num_epochs: None repeats forever (the default); a count ends after that many epochs.

  Returns a grain DatasetIterator of {"inputs", "targets": int32 [B, T], "mask": bool [B, T],
  "weights": float32 [B, T]} with B = global_batch_size / process_count; checkpoint it through
  get_state / set_state.
  """
  check_lengths(seq_len, segment_len)
  check_batch(global_batch_size, process_index, process_count)
  n_answer = answer_tokens(data_cfg)
  # --- BookSum: the loss on the summary alone (infini_jax/data/booksum.py), tokenized here. ---
  if data_cfg.name == "booksum":
    documents = sources.load_source(data_cfg.name, data_cfg.get("train_split", "train"),
                                    data_cfg.data_dir, **builder_kwargs(data_cfg, seq_len))
    records = TokenizedCorpus(*booksum.tokenize(
        documents.records, get_tokenizer(data_cfg.tokenizer), seq_len,
        summary_only=bool(data_cfg.get("booksum_summary_only", True))))
  else:
    records = open_tokens(data_cfg, data_cfg.get("train_split", "train"), seq_len)
  return train_iterator(records, get_tokenizer(data_cfg.tokenizer), seq_len, segment_len,
                        global_batch_size, seed, process_index=process_index,
                        process_count=process_count, num_epochs=data_cfg.num_epochs,
                        answer_tokens=n_answer,
                        answer_weight=float(data_cfg.get("answer_weight", 1.0)))


def answer_tokens(data_cfg: ConfigDict) -> int:
  """How many targets before each document's EOS data.answer_weight weighs: a passkey document
  is prompt + " " + answer, and its answer is the key's digits. 0 with the default weight 1."""
  weight = float(data_cfg.get("answer_weight", 1.0))
  if weight == 1.0:
    return 0
  if data_cfg.name != "passkey" or weight <= 0:
    raise ValueError(f"data.answer_weight={weight} weighs the passkey answer in the loss: use a "
                     "positive value with data.name='passkey', 1 otherwise")
  tokenizer = get_tokenizer(data_cfg.tokenizer)
  digits = int(data_cfg.get("passkey_digits", 5))
  return len(tokenizer.encode(" " + "9" * digits)) - len(tokenizer.encode(" "))


def iter_eval_documents(
    name: str,
    split: str,
    data_dir: str,
    tokenizer: Tokenizer | str,
    max_documents: int | None = None,
    min_length: int = 0,
    **builder_kwargs: Any,
) -> Iterator[np.ndarray]:
  """Whole documents, untruncated, in the stored (deterministic) order: int32 [BOS + doc + EOS].

  Read from the split's token records when it was tokenized with this tokenizer at prepare
  time, else tokenized here. Documents with fewer than `min_length` tokens (BOS and EOS
  included) are skipped; at most `max_documents` are yielded.
  """
  tok = _tokenizer(tokenizer)
  tokenizer_name = tokenizer if isinstance(tokenizer, str) else getattr(tok, "path", "byte")
  # Builders that take the tokenizer (passkey: lengths in tokens) get the one named here.
  builder_kwargs = {k: tokenizer_name if k == "tokenizer" else v
                    for k, v in builder_kwargs.items()}
  builder = sources.prepared_builder(name, data_dir, **builder_kwargs)
  if os.path.exists(os.path.join(tokens.tokens_dir(builder.data_dir, tokenizer_name, split),
                                 "info.json")):
    records = _open_split(builder, split, tokenizer_name, tok, f"{name}/{split}")
    docs = (records.document(d) for d in range(len(records)))
  else:
    dtype = tokens.token_dtype(tok)
    docs = (tokens.document_ids(tok, text, dtype).astype(np.int32)
            for text in sources.load_source(name, split, data_dir, **builder_kwargs))
  yielded = 0
  for ids in docs:
    if max_documents is not None and yielded >= max_documents:
      return
    if len(ids) >= min_length:
      yielded += 1
      yield ids


def iter_passkey_prompts(
    length: int,
    position: str | float,
    num_samples: int,
    tokenizer: Tokenizer | str = "byte",
    digits: int = 5,
    seed: int = 0,
    split: str = "test",
    filler: str = "repeat",
    filler_glob: str = "",
) -> Iterator[tuple[np.ndarray, str]]:
  """(prompt ids int32 [1 + ~length] with BOS first, answer digits), made on the fly; with
  filler "text", the filler is cut from `split`'s files of filler_glob."""
  yield from passkey.passkey_prompts(length, position, num_samples, _tokenizer(tokenizer),
                                     digits=digits, seed=seed, split=split, filler=filler,
                                     filler_glob=filler_glob)
