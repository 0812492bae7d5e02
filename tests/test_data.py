"""Data: builders (text_files, python_code subset, passkey, pg19 path), windows, grain pipeline.

Everything is built into pytest's tmp_path from files the tests write or from a few stdlib
packages (python_code's `small` config); nothing is downloaded.
"""

import functools
import json
import os
import platform
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow_datasets as tfds
from ml_collections import ConfigDict

import infini_jax.data as data
from infini_jax.data import passkey, pipeline, sources, text_files, tokens
from infini_jax.data.local_builder import LocalBuilder

BYTE = data.ByteTokenizer()
PAD, BOS, EOS = BYTE.pad_id, BYTE.bos_id, BYTE.eos_id
T = 16  # Training length of the pipeline tests (segment length 8).
# Lengths around the window size (0, T - 1, T, T + 1, 2T targets) and a non-ASCII one.
DOCS = ["", "a", "x" * (T - 2), "y" * (T - 1), "z" * T, "w" * (2 * T - 1), "héllo wörld " * 7,
        "The grass is green. " * 5, "0123456789" * 9]


def rows_of(it, steps):
  """The rows of `steps` batches as tuples (inputs, targets, mask) of numpy arrays."""
  out = []
  for _ in range(steps):
    b = next(it)
    out += list(zip(b["inputs"], b["targets"], b["mask"]))
  return out


def one_epoch(docs=DOCS, batch=1, seed=0):
  n_windows = len(pipeline.window_index(pipeline.tokenize_corpus(docs, BYTE).lengths, T))
  it = data.train_iterator(docs, BYTE, T, 8, batch, seed, num_epochs=1)
  return rows_of(it, n_windows // batch)


# --- windows -------------------------------------------------------------------------------


def reference_windows(docs=DOCS):
  """The windows the spec asks for, written the obvious way: row bytes of (inputs, targets)."""
  rows = []
  for text in docs:
    toks = [BOS] + BYTE.encode(text) + [EOS]
    for start in range(0, len(toks) - 1, T):
      inputs, targets = toks[start:start + T], toks[start + 1:start + T + 1]
      inputs = inputs[:len(targets)]  # The last input of a document has no target.
      pad = [PAD] * (T - len(targets))
      rows.append(np.array(inputs + pad, np.int32).tobytes()
                  + np.array(targets + pad, np.int32).tobytes())
  return rows


def test_windows_cover_every_target_once_without_crossing_documents():
  got = [inputs.tobytes() + targets.tobytes() for inputs, targets, _ in one_epoch()]
  assert sorted(got) == sorted(reference_windows())


def test_unshuffled_windows_rebuild_each_document_exactly():
  corpus = pipeline.tokenize_corpus(DOCS, BYTE)
  windows = pipeline.window_index(corpus.lengths, T)
  batch = pipeline.CutWindows(corpus, windows, T, PAD)(np.arange(len(windows)))
  for d, text in enumerate(DOCS):
    rows = np.flatnonzero(windows[:, 0] == d)
    assert batch["inputs"][rows[0], 0] == BOS
    targets = np.concatenate([batch["targets"][r][batch["mask"][r]] for r in rows])
    inputs = np.concatenate([batch["inputs"][r][batch["mask"][r]] for r in rows])
    np.testing.assert_array_equal(targets, BYTE.encode(text) + [EOS])
    np.testing.assert_array_equal(inputs, [BOS] + BYTE.encode(text))


def test_mask_marks_exactly_the_padding():
  for inputs, targets, mask in one_epoch():
    assert inputs.dtype == targets.dtype == np.int32 and mask.dtype == bool
    np.testing.assert_array_equal(mask, targets != PAD)  # PAD is never a byte.
    np.testing.assert_array_equal(mask, inputs != PAD)
    n = int(mask.sum())
    assert mask[:n].all() and not mask[n:].any()  # Padding only after the real tokens.


# --- the grain iterator --------------------------------------------------------------------


def test_same_seed_same_batches_other_seed_other_order():
  a = rows_of(data.train_iterator(DOCS, BYTE, T, 8, 4, seed=3), 6)
  b = rows_of(data.train_iterator(DOCS, BYTE, T, 8, 4, seed=3), 6)
  c = rows_of(data.train_iterator(DOCS, BYTE, T, 8, 4, seed=4), 6)
  assert all(np.array_equal(x[0], y[0]) for x, y in zip(a, b))
  assert not all(np.array_equal(x[0], y[0]) for x, y in zip(a, c))


def test_epochs_repeat_every_window_and_reshuffle():
  n = len(one_epoch())
  rows = rows_of(data.train_iterator(DOCS, BYTE, T, 8, 1, seed=0, num_epochs=2), 2 * n)
  first, second = [r[1].tobytes() for r in rows[:n]], [r[1].tobytes() for r in rows[n:]]
  assert sorted(first) == sorted(second) and first != second


def test_restored_iterator_resumes_the_exact_batches():
  it = data.train_iterator(DOCS, BYTE, T, 8, 2, seed=1)
  rows_of(it, 5)
  state = json.loads(json.dumps(it.get_state()))  # What a checkpoint stores.
  expected = rows_of(it, 7)
  fresh = data.train_iterator(DOCS, BYTE, T, 8, 2, seed=1)
  fresh.set_state(state)
  got = rows_of(fresh, 7)
  for x, y in zip(expected, got):
    for a, b in zip(x, y):
      np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("process_count", [2, 4])
def test_process_shards_are_disjoint_and_complete(process_count):
  docs = DOCS * 3  # Enough windows for several global batches of 8.
  single = rows_of(data.train_iterator(docs, BYTE, T, 8, 8, seed=2), 5)
  shards = [rows_of(data.train_iterator(docs, BYTE, T, 8, 8, seed=2, process_index=p,
                                        process_count=process_count), 5)
            for p in range(process_count)]
  local = 8 // process_count
  for step in range(5):
    glued = [row for p in range(process_count)
             for row in shards[p][step * local:(step + 1) * local]]
    for (a, _, _), (b, _, _) in zip(glued, single[step * 8:(step + 1) * 8]):
      np.testing.assert_array_equal(a, b)


def test_bad_lengths_and_batches_say_what_to_pick():
  with pytest.raises(ValueError, match=r"not a multiple of the segment length 6.*12 or 18"):
    data.train_iterator(DOCS, BYTE, 16, 6, 2, 0)
  with pytest.raises(ValueError, match="use a positive multiple of 4"):
    data.train_iterator(DOCS, BYTE, 16, 8, 6, 0, process_index=0, process_count=4)
  with pytest.raises(ValueError, match="less than one global batch"):
    data.train_iterator(["ab"], BYTE, 16, 8, 4, 0, num_epochs=1)


# --- builders and sources ------------------------------------------------------------------


def write_corpus(root, n=40):
  texts = {}
  for i in range(n):
    rel = f"part{i % 3}/doc_{i:02d}.txt"
    os.makedirs(root / f"part{i % 3}", exist_ok=True)
    texts[rel] = f"document {i} ünïcode\n" * (i + 1)
    (root / rel).write_text(texts[rel], encoding="utf-8")
  return texts


def test_text_files_builder_splits_by_path_hash(tmp_path):
  texts = write_corpus(tmp_path / "corpus")
  data_dir = tmp_path / "tfds"
  builder = data.prepare("text_files", data_dir, text_glob=str(tmp_path / "corpus"))
  assert data.prepare("text_files", data_dir, text_glob=str(tmp_path / "corpus")).data_dir == \
      builder.data_dir  # Idempotent.
  seen = {}
  for split in builder.info.splits:
    docs = data.load_source("text_files", split, data_dir, text_glob=str(tmp_path / "corpus"))
    for i, text in enumerate(docs):
      rel = docs.records[i]["path"].decode()
      assert text_files.split_of(rel) == split
      seen[rel] = text
  assert seen == texts
  # A glob is a different corpus (its own config) in the same data_dir.
  part0 = {k: v for k, v in texts.items() if k.startswith("part0/")}
  data.prepare("text_files", data_dir, text_glob=str(tmp_path / "corpus" / "part0" / "*.txt"))
  got = set(data.load_source("text_files", "train", data_dir,
                             text_glob=str(tmp_path / "corpus" / "part0" / "*.txt")))
  assert got == {v for k, v in part0.items() if text_files.split_of(k[6:]) == "train"}


def test_bad_corpora_and_unprepared_datasets_say_what_to_do(tmp_path):
  (tmp_path / "empty").mkdir()
  with pytest.raises(ValueError, match="no files match .*empty"):
    data.prepare("text_files", tmp_path / "tfds", text_glob=str(tmp_path / "empty"))
  with pytest.raises(ValueError, match="no files match"):
    data.prepare("text_files", tmp_path / "tfds", text_glob=str(tmp_path / "*.nothing"))
  (tmp_path / "bin").mkdir()
  (tmp_path / "bin" / "x.dat").write_bytes(b"\xff\xfe\x00binary")
  with pytest.raises(ValueError, match="x.dat is not UTF-8"):
    data.prepare("text_files", tmp_path / "tfds", text_glob=str(tmp_path / "bin"))
  with pytest.raises(FileNotFoundError, match=r"not prepared.*prepare\('python_code'"):
    data.load_source("python_code", "train", tmp_path / "nothing")
  with pytest.raises(FileNotFoundError, match="tfds build pg19 .*--file_format=array_record"):
    data.load_source("pg19", "train", tmp_path / "nothing")
  with pytest.raises(ValueError, match="known datasets are python_code, text_files, passkey"):
    data.load_source("c4", "train", tmp_path)
  with pytest.raises(ValueError, match="known datasets are"):
    data.make_train_iterator(ConfigDict({"name": "c4", "data_dir": str(tmp_path),
                                         "tokenizer": "byte"}), 16, 8, 2, 0)


def test_a_split_too_big_for_memory_prepares_without_tensorflow(tmp_path, monkeypatch):
  """TFDS spills a split over its memory buffer (1 GB) to files through tf.io.gfile; ours go
  to local files, in the same order as a split kept in memory."""
  from tensorflow_datasets.core import shuffle

  texts = write_corpus(tmp_path / "corpus")
  in_memory = data.prepare("text_files", tmp_path / "a", text_glob=str(tmp_path / "corpus"))
  monkeypatch.setattr(shuffle, "MAX_MEM_BUFFER_SIZE", 100)  # spill after ~100 bytes
  spilled = data.prepare("text_files", tmp_path / "b", text_glob=str(tmp_path / "corpus"))
  for split in in_memory.info.splits:
    a = data.load_source("text_files", split, tmp_path / "a", text_glob=str(tmp_path / "corpus"))
    b = data.load_source("text_files", split, tmp_path / "b", text_glob=str(tmp_path / "corpus"))
    assert list(a) == list(b)
  assert sum(spilled.info.splits[s].num_examples for s in spilled.info.splits) == len(texts)


def test_python_code_small_subset_records_the_python_version(tmp_path):
  data.prepare("python_code", tmp_path, config="small")
  assert data.dataset_python_version(tmp_path, "small") == platform.python_version()
  docs = data.load_source("python_code", "train", tmp_path, config="small")
  paths = [r["path"].decode() for r in docs.records]
  assert paths and all(p.startswith(("json/", "email/", "http/", "urllib/")) for p in paths)
  assert all(text_files.split_of(p) == "train" for p in paths)
  assert any("def " in text for text in docs)
  cfg = ConfigDict({"name": "python_code", "data_dir": str(tmp_path), "tokenizer": "byte",
                    "subset": "small", "train_split": "train", "eval_split": "validation",
                    "num_epochs": None})
  with pytest.raises(FileNotFoundError, match=r"not tokenized .*prepare_from_config"):
    data.make_train_iterator(cfg, 64, 16, 4, seed=0)
  data.prepare_from_config(cfg)
  batch = next(data.make_train_iterator(cfg, 64, 16, 4, seed=0))
  assert batch["inputs"].shape == (4, 64) and batch["mask"].any()
  val = list(data.iter_eval_documents("python_code", "validation", tmp_path, "byte",
                                      config="small"))
  texts = list(data.load_source("python_code", "validation", tmp_path, config="small"))
  assert [len(v) for v in val] == [len(t.encode()) + 2 for t in texts]  # Untruncated.
  assert all(v[0] == BOS and v[-1] == EOS and v.dtype == np.int32 for v in val)
  longest = max(len(v) for v in val)
  assert len(list(data.iter_eval_documents("python_code", "validation", tmp_path, "byte",
                                           min_length=longest, config="small"))) == 1
  assert len(list(data.iter_eval_documents("python_code", "validation", tmp_path, "byte",
                                           max_documents=2, config="small"))) == 2


class Pg19(LocalBuilder, skip_registration=True):
  """A stand-in for the catalog's pg19: same name and text feature, two tiny books."""

  name = "pg19"
  VERSION = tfds.core.Version("0.1.1")

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
        {"book_text": tfds.features.Text(), "book_id": np.int32}))

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples()}

  def _generate_examples(self):
    for i in range(2):
      yield str(i), {"book_text": f"Chapter {i}. It was a dark night.", "book_id": i}


def test_pg19_is_read_from_its_prepared_files(tmp_path):
  Pg19(data_dir=str(tmp_path), file_format="array_record").download_and_prepare()
  assert sorted(data.load_source("pg19", "train", tmp_path)) == [
      "Chapter 0. It was a dark night.", "Chapter 1. It was a dark night."]
  cfg = ConfigDict({"name": "pg19", "data_dir": str(tmp_path), "tokenizer": "byte"})
  data.prepare_from_config(cfg)  # tokenizes the books copied in; generates nothing
  records = data.open_tokens(cfg, "train")
  assert sorted(BYTE.decode(records.document(d)) for d in range(len(records))) == [
      "Chapter 0. It was a dark night.", "Chapter 1. It was a dark night."]


# --- token records -------------------------------------------------------------------------


def text_files_config(tmp_path, **overrides):
  cfg = ConfigDict({"name": "text_files", "data_dir": str(tmp_path / "tfds"), "tokenizer": "byte",
                    "text_glob": str(tmp_path / "corpus"), "train_split": "train",
                    "num_epochs": None})
  cfg.update(overrides)
  return cfg


def test_token_records_give_the_batches_and_documents_of_the_text(tmp_path, monkeypatch):
  """Windows read from the prepared records, across record boundaries (7-token records here),
  equal windows cut from the text tokenized in memory; so do the eval documents."""
  write_corpus(tmp_path / "corpus")
  cfg = text_files_config(tmp_path)
  data.prepare("text_files", cfg.data_dir, text_glob=cfg.text_glob)
  from_text = list(data.iter_eval_documents("text_files", "train", cfg.data_dir, "byte",
                                            text_glob=cfg.text_glob))
  monkeypatch.setattr(tokens, "CHUNK", 7)
  data.prepare_from_config(cfg)
  records = data.open_tokens(cfg, "train")
  assert records.chunk == 7 and records.info["tokenizer"] == "byte"
  texts = data.load_source("text_files", "train", cfg.data_dir, text_glob=cfg.text_glob)
  np.testing.assert_array_equal(records.lengths, [len(t.encode()) + 2 for t in texts])
  from_records = list(data.iter_eval_documents("text_files", "train", cfg.data_dir, "byte",
                                               text_glob=cfg.text_glob))
  assert len(from_records) == len(from_text) == len(texts)
  for a, b in zip(from_records, from_text):
    assert a.dtype == np.int32
    np.testing.assert_array_equal(a, b)
  got = rows_of(data.make_train_iterator(cfg, T, 8, 4, seed=5), 6)
  want = rows_of(data.train_iterator(list(texts), BYTE, T, 8, 4, seed=5), 6)
  for x, y in zip(got, want):
    for a, b in zip(x, y):
      np.testing.assert_array_equal(a, b)
  data.prepare_from_config(cfg)  # Idempotent: the records are reused, not rewritten.
  assert data.open_tokens(cfg, "train").info == records.info


def test_parallel_prepare_writes_the_records_of_a_serial_one(tmp_path, monkeypatch):
  monkeypatch.setattr(tokens, "CHUNK", 5)  # documents of many records, in both
  write_corpus(tmp_path / "corpus", n=30)
  cfg = text_files_config(tmp_path)
  builder = data.prepare("text_files", cfg.data_dir, text_glob=cfg.text_glob)
  open_docs = functools.partial(data.load_source, "text_files", "train", cfg.data_dir,
                                text_glob=cfg.text_glob)
  serial = data.prepare_tokens(open_docs, "byte", str(tmp_path / "serial"), workers=1)
  parallel = data.prepare_tokens(open_docs, "byte", str(tmp_path / "parallel"), workers=2)
  assert len(os.listdir(tmp_path / "parallel")) > len(os.listdir(tmp_path / "serial"))
  np.testing.assert_array_equal(serial.lengths, parallel.lengths)
  for d in range(len(serial)):
    np.testing.assert_array_equal(serial.document(d), parallel.document(d))
  assert builder.info.splits["train"].num_examples == len(parallel)
  assert parallel.chunk == 5 and len(parallel.info.pop("shards")) > len(serial.info.pop("shards"))
  assert parallel.info == serial.info


# --- passkey -------------------------------------------------------------------------------


@pytest.mark.parametrize("length", [300, 2000])
def test_passkey_example_layout_length_and_key_position(length):
  fractions = []
  for position in ["start", 0.25, "middle", "end"]:
    ex = data.make_passkey_example(length, position, 5, np.random.default_rng(7), BYTE)
    prompt, answer = ex["prompt"], ex["answer"]
    assert len(BYTE.encode(prompt)) == length == ex["length"]  # Exact for bytes.
    assert prompt.startswith(passkey.INSTRUCTION) and prompt.endswith(passkey.QUESTION)
    assert len(answer) == 5 and answer.isdigit() and ex["text"] == prompt + " " + answer
    start = int(round(ex["key_position"] * length))
    assert prompt[start:].startswith(passkey.KEY_LINE.format(key=answer))
    assert prompt.count(answer) == 2
    fractions.append(ex["key_position"])
  assert fractions == sorted(set(fractions))  # start < 0.25 < middle < end


def test_passkey_errors_and_million_token_prompt():
  with pytest.raises(ValueError, match=r"too short.*use a length >= \d+"):
    data.make_passkey_example(100, "start", 5, np.random.default_rng(0), BYTE)
  with pytest.raises(ValueError, match="passkey position 'top'"):
    data.make_passkey_example(1000, "top", 5, np.random.default_rng(0), BYTE)
  ids, answer = next(data.iter_passkey_prompts(1_000_000, "middle", 1, "byte"))
  assert ids.dtype == np.int32 and len(ids) == 1_000_001 and ids[0] == BOS
  assert BYTE.decode(ids[-200:]).endswith(passkey.QUESTION) and answer.isdigit()


def test_passkey_dataset_splits_use_different_seeds(tmp_path):
  kwargs = dict(length=400, position="random", digits=6, num_examples=8, num_eval_examples=4)
  data.prepare("passkey", tmp_path, **kwargs)
  train = data.load_source("passkey", "train", tmp_path, **kwargs).records
  test = data.load_source("passkey", "test", tmp_path, **kwargs).records
  train_keys = {r["answer"].decode() for r in train}
  test_keys = [r["answer"].decode() for r in test]
  assert len(train) == 8 and len(test) == 4 and not train_keys & set(test_keys)
  assert all(len(k) == 6 for k in test_keys)
  assert {int(r["length"]) for r in train} == {400}
  # The evaluator's on-the-fly prompts are the prepared test split.
  prompts = list(passkey.passkey_prompts(400, "random", 4, BYTE, digits=6))
  order = sorted(range(4), key=lambda i: test[i]["id"])
  assert [test[i]["answer"].decode() for i in order] == [a for _, a in prompts]


def test_passkey_training_documents_fill_one_window(tmp_path):
  cfg = ConfigDict({"name": "passkey", "data_dir": str(tmp_path), "tokenizer": "byte",
                    "passkey_length": 0, "passkey_digits": 5, "passkey_position": "random",
                    "passkey_examples": 6, "passkey_eval_examples": 100, "passkey_seed": 0,
                    "train_split": "train", "eval_split": "test", "num_epochs": None})
  data.prepare_from_config(cfg, seq_len=512)
  batch = next(data.make_train_iterator(cfg, 512, 128, 4, seed=0))
  assert batch["mask"].all()  # prompt + answer + EOS targets == 512 exactly
  assert (batch["inputs"][:, 0] == BOS).all() and (batch["targets"][:, -1] == EOS).all()
  assert (batch["weights"] == 1.0).all()
  # data.answer_weight weighs exactly the key's digits, the 5 targets before EOS.
  cfg.answer_weight = 8.0
  batch = next(data.make_train_iterator(cfg, 512, 128, 4, seed=0))
  heavy = batch["weights"] == 8.0
  assert (heavy.sum(1) == 5).all() and ((batch["weights"] == 1.0) | heavy).all()
  for row, weighted in zip(batch["targets"], heavy):
    key = BYTE.decode(row[weighted])
    text = BYTE.decode(row)
    assert key.isdigit() and text.endswith(f"The pass key is {key}")
    assert f"The pass key is {key}. Remember it." in text  # the key line holds the same key
  cfg.name = "python_code"
  with pytest.raises(ValueError, match="answer_weight=8.0 weighs the passkey answer"):
    data.make_train_iterator(cfg, 512, 128, 4, seed=0)
  # passkey_jitter: prompts up to that many tokens shorter, the window padded after them.
  cfg.update(name="passkey", answer_weight=1.0, passkey_jitter=100, passkey_examples=32)
  data.prepare_from_config(cfg, seq_len=512)
  batch = next(data.make_train_iterator(cfg, 512, 128, 32, seed=0))
  real = batch["mask"].sum(1)
  assert real.max() <= 512 and real.min() >= 412 and len(set(real.tolist())) > 8
  assert (batch["targets"][np.arange(32), real - 1] == EOS).all()


# --- no TensorFlow -------------------------------------------------------------------------


def test_nothing_imports_tensorflow(tmp_path):
  script = textwrap.dedent(f"""
      import sys
      import infini_jax.data as data
      (corpus := __import__("pathlib").Path({str(tmp_path)!r}) / "c").mkdir()
      for i in range(12):
        (corpus / f"{{i}}.txt").write_text("hello " * (i + 3))
      data.prepare("text_files", {str(tmp_path / "tfds")!r}, text_glob=str(corpus))
      docs = data.load_source("text_files", "train", {str(tmp_path / "tfds")!r},
                              text_glob=str(corpus))
      next(data.train_iterator(docs, data.ByteTokenizer(), 16, 8, 2, 0))
      bad = [m for m in sys.modules if m == "tensorflow" or m.startswith("tensorflow.")]
      assert not bad, bad
      print("ok")
  """)
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  out = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True, text=True,
                       timeout=120)
  assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]


def test_prompt_parts_split_a_passkey_prompt():
  ex = passkey.make_passkey_example(600, "middle", 5, np.random.default_rng(1), BYTE)
  masks = passkey.prompt_parts(ex["prompt"], ex["answer"])
  stacked = np.stack(list(masks.values()))
  assert stacked.sum(0).max() == 1  # no character in two parts
  text = np.array(list(ex["prompt"]))
  assert "".join(text[masks["key digits"]]) == 2 * ex["answer"]
  assert "".join(text[masks["question"]]) == passkey.QUESTION
  assert masks["filler"].sum() > 0.8 * len(text) - len(passkey.INSTRUCTION)


def test_runs_started_together_prepare_a_dataset_once(tmp_path):
  """Two processes preparing the same dataset in one data_dir both succeed and read one copy
  (they used to race renaming their finished copies into place, and one crashed)."""
  code = textwrap.dedent(f"""
      from infini_jax import data
      b = data.prepare("passkey", {str(tmp_path)!r}, length=300, num_examples=3000,
                       num_eval_examples=10)
      print(len(b.as_data_source()["train"]))
  """)
  procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True) for _ in range(2)]
  outs = [p.communicate(timeout=300) for p in procs]
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0, err[-2000:]
    assert out.split()[-1] == "3000"
  assert len(list((tmp_path / "passkey").glob("*/1.0.0"))) == 1


def test_the_config_schema_holds_every_data_key_the_pipeline_reads():
  from infini_jax import config as configlib

  cfg = configlib.defaults().data
  assert cfg.num_epochs is None  # repeat forever
  cfg.update(name="passkey", num_epochs=2, passkey_seed=3, passkey_eval_examples=5)
  kwargs = pipeline.builder_kwargs(cfg, seq_len=512)
  assert (kwargs["seed"], kwargs["num_eval_examples"]) == (3, 5)
  with pytest.raises(TypeError):
    cfg.num_epochs = "two"  # typed: a command-line override is parsed as an int
