"""Token records: each split tokenized once, at prepare time, and read back by random access.

Training and evaluation never tokenize text. `prepare_tokens` turns a prepared dataset's split
into token ids, in parallel over shards of documents, and writes them beside the dataset:

    <builder.data_dir>/tokens/<tokenizer label>/<split>/
      tokens.array_record-SSSSS-of-NNNNN   # record r: up to CHUNK token ids of one document
      lengths.npy                          # int64 [D]: tokens of document d, BOS and EOS included
      info.json                            # the tokenizer's identity, dtype, chunk, shards

Document d is `[BOS] + tokens + [EOS]`, stored in ceil(lengths[d] / CHUNK) consecutive records
(uint16 when the vocabulary fits, else int32, little-endian), in the split's stored order. So any
window of any document is one or two small record reads, and what a reader holds in memory is
O(documents), never O(tokens): the time to the first batch and the memory of a run do not grow
with the corpus.

The tokenizer's identity (`Tokenizer.fingerprint`: "byte", or "spm-" and a hash of the
SentencePiece model file) is stored in info.json. A run whose tokenizer differs is refused: a
model file retrained in place would otherwise train on ids that mean other pieces.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import shutil
from collections.abc import Callable, Sequence
from typing import Any

import grain
import numpy as np

from infini_jax.data.tokenizer import Tokenizer, get_tokenizer

# Tokens per record. An open reader holds an index entry per record (about 100 bytes), so
# records are large: 2 GB of bytes is 32K records (3 MB of index); a window of 4096 reads one or
# two 128 KiB records (tens of microseconds).
CHUNK = 65536
_RECORD_OPTIONS = "group_size:1,uncompressed"  # One record per read, no decompression.
_PARALLEL_BYTES = 64 << 20  # Splits smaller than this are tokenized in this process.


def token_dtype(tokenizer: Tokenizer) -> np.dtype:
  return np.dtype("<u2") if tokenizer.vocab_size <= 2**16 else np.dtype("<i4")


def tokenizer_label(tokenizer_name: str) -> str:
  """The folder of a tokenizer's records: "byte", or the SentencePiece model's file stem."""
  if tokenizer_name == "byte":
    return "byte"
  stem = os.path.splitext(os.path.basename(tokenizer_name))[0]
  return "spm-" + re.sub(r"[^A-Za-z0-9_.-]", "_", stem)


def tokens_dir(dataset_dir: str, tokenizer_name: str, split: str) -> str:
  return os.path.join(os.fspath(dataset_dir), "tokens", tokenizer_label(tokenizer_name), split)


def document_ids(tokenizer: Tokenizer, text: str, dtype: np.dtype) -> np.ndarray:
  """[BOS] + tokens + [EOS] of one document, as dtype."""
  if tokenizer.fingerprint == "byte":  # The common case, without an int32 copy of the text.
    raw = np.frombuffer(text.encode("utf-8"), np.uint8)
    ids = np.empty(len(raw) + 2, dtype)
    ids[0], ids[1:-1], ids[-1] = tokenizer.bos_id, raw, tokenizer.eos_id
    return ids
  return np.concatenate([[tokenizer.bos_id], tokenizer.encode_array(text),
                         [tokenizer.eos_id]]).astype(dtype)


class TokenRecords:
  """Random access to one tokenized split: `read(d, lo, hi)` is document d's ids [lo, hi).

  Holds the lengths and each document's first record (O(documents)); the records stay on disk.
  """

  def __init__(self, path: str, tokenizer: Tokenizer | None = None):
    info_path = os.path.join(path, "info.json")
    if not os.path.exists(info_path):
      raise FileNotFoundError(f"no token records in {path}")
    with open(info_path) as f:
      self.info = json.load(f)
    if tokenizer is not None and self.info["tokenizer"] != tokenizer.fingerprint:
      raise ValueError(
          f"the token records in {path} were made by tokenizer {self.info['tokenizer']} "
          f"({self.info['tokenizer_name']}), not by this run's {tokenizer!r} "
          f"({tokenizer.fingerprint}): delete {os.path.dirname(path)} to tokenize again with it "
          "(the next run's prepare does), or use the model they were made with")
    self.path = path
    self.dtype = np.dtype(self.info["dtype"])
    self.chunk = int(self.info["chunk"])
    self.lengths = np.load(os.path.join(path, "lengths.npy"))  # [D] int64
    per_doc = -(-self.lengths // self.chunk)
    self.first_record = np.concatenate([[0], np.cumsum(per_doc)[:-1]]).astype(np.int64)
    # "file[0:n]": the record counts come from info.json, so no shard is opened before it is
    # read (opening one reads its index).
    self.source = grain.sources.ArrayRecordDataSource(
        [f"{os.path.join(path, name)}[0:{n}]" for name, n in self.info["shards"]])
    if len(self.source) != int(per_doc.sum()):
      raise ValueError(f"the token records in {path} are incomplete ({len(self.source)} of "
                       f"{int(per_doc.sum())} records): delete {path} and prepare again")

  def __len__(self) -> int:
    return len(self.lengths)

  def read(self, doc: int, lo: int, hi: int) -> np.ndarray:
    """Document doc's token ids [lo, hi) (0 <= lo < hi <= lengths[doc]), in the stored dtype."""
    first, last = lo // self.chunk, (hi - 1) // self.chunk
    base = int(self.first_record[doc])
    # One record at a time: a window needs one or two, and `__getitems__` starts a thread pool.
    records = [self.source[r] for r in range(base + first, base + last + 1)]
    ids = np.frombuffer(b"".join(records), self.dtype)
    return ids[lo - first * self.chunk:hi - first * self.chunk]

  def document(self, doc: int) -> np.ndarray:
    return self.read(doc, 0, int(self.lengths[doc])).astype(np.int32)


# --- writing ---------------------------------------------------------------------------------


def _write_shard(task: tuple[Callable[[], Sequence[str]], str, int, int, int, str]) -> tuple[
    np.ndarray, int, int]:
  """Tokenizes documents [start, stop) into one array_record file: (lengths, text bytes,
  records)."""
  from array_record.python.array_record_module import ArrayRecordWriter

  open_documents, tokenizer_name, chunk, start, stop, out = task
  documents, tokenizer = open_documents(), get_tokenizer(tokenizer_name)
  dtype = token_dtype(tokenizer)
  writer = ArrayRecordWriter(out, _RECORD_OPTIONS)
  lengths, text_bytes, records = [], 0, 0
  for d in range(start, stop):
    text = documents[d]
    text_bytes += len(text.encode("utf-8"))
    ids = document_ids(tokenizer, text, dtype)
    for at in range(0, len(ids), chunk):
      writer.write(ids[at:at + chunk].tobytes())
      records += 1
    lengths.append(len(ids))
  writer.close()
  return np.array(lengths, np.int64), text_bytes, records


def prepare_tokens(
    open_documents: Callable[[], Sequence[str]],
    tokenizer_name: str,
    out: str,
    *,
    num_bytes: int = 0,
    workers: int | None = None,
    description: str = "",
) -> TokenRecords:
  """Tokenizes documents into token records at `out` (a no-op when they are there already).

  open_documents: a picklable function returning the split's random-access documents (each
  worker process opens them itself). num_bytes: the split's size, if known; splits under 64 MB
  are tokenized in this process. workers: processes (default: the cores this process may use).
  Shards of consecutive documents are written in parallel, then the split is renamed into
  place, so a reader never sees half of it. A progress bar counts the text tokenized.
  """
  tokenizer = get_tokenizer(tokenizer_name)
  if os.path.exists(os.path.join(out, "info.json")):
    return TokenRecords(out, tokenizer)
  documents = open_documents()
  count, num_bytes = len(documents), int(num_bytes)
  if workers is None:
    workers = len(os.sched_getaffinity(0)) if num_bytes >= _PARALLEL_BYTES else 1
  # Several shards per worker keep the cores busy when documents differ in length.
  num_shards = max(1, min(count, 8 * workers if workers > 1 else 1))
  edges = np.linspace(0, count, num_shards + 1).astype(int)
  tmp = f"{out}.tmp-{os.getpid()}"
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  tasks = [(open_documents, tokenizer_name, CHUNK, int(edges[s]), int(edges[s + 1]),
            os.path.join(tmp, f"tokens.array_record-{s:05d}-of-{num_shards:05d}"))
           for s in range(num_shards)]
  from tqdm import tqdm

  bar = tqdm(total=num_bytes or None, unit="B", unit_scale=True, desc=f"tokenize {description}",
             disable=num_bytes < _PARALLEL_BYTES)
  results: list[Any] = [None] * num_shards
  if workers > 1:
    # spawn, not fork: the caller may hold JAX's threads, which a forked child would inherit.
    with multiprocessing.get_context("spawn").Pool(min(workers, num_shards)) as pool:
      for s, result in pool.imap_unordered(_indexed_shard, list(enumerate(tasks))):
        results[s] = result
        bar.update(result[1])
  else:
    for s, task in enumerate(tasks):
      results[s] = _write_shard(task)
      bar.update(results[s][1])
  bar.close()
  lengths = np.concatenate([r[0] for r in results]) if results else np.zeros(0, np.int64)
  np.save(os.path.join(tmp, "lengths.npy"), lengths)
  info = {"tokenizer": tokenizer.fingerprint, "tokenizer_name": tokenizer_name,
          "vocab_size": tokenizer.vocab_size, "dtype": token_dtype(tokenizer).str,
          "chunk": CHUNK, "documents": count, "tokens": int(lengths.sum()),
          "shards": [[os.path.basename(t[-1]), r[2]] for t, r in zip(tasks, results)],
          "text_bytes": int(sum(r[1] for r in results)), "source": description}
  with open(os.path.join(tmp, "info.json"), "w") as f:
    json.dump(info, f, indent=1)
  os.makedirs(os.path.dirname(out), exist_ok=True)
  os.rename(tmp, out)
  return TokenRecords(out, tokenizer)


def _indexed_shard(item: tuple[int, tuple]) -> tuple[int, tuple[np.ndarray, int]]:
  return item[0], _write_shard(item[1])
