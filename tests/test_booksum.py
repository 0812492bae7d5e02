"""BookSum: the preparer (JSON lines, parquet), the summary-only loss, ROUGE, the summarise
evaluator, and configs/booksum_8b.py's runlocal end to end. Every file is written here."""

import importlib
import json
import math
import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from flax import nnx

from infini_jax import config as configlib
from infini_jax import report, summarise, trainer
from infini_jax.data import booksum, pipeline, sources
from infini_jax.data.tokenizer import ByteTokenizer
from infini_jax.model import InfiniTransformer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BYTE = ByteTokenizer()


def write_jsonl(path, rows):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in rows)


def load_config(arg):
  return importlib.import_module("configs.booksum_8b").get_config(arg)


def runlocal(tmp_path, stage):
  c = load_config(f"runlocal,stage={stage}")
  c.data.update(data_dir=str(tmp_path / "tfds"), text_glob=str(tmp_path / "stories"),
                booksum_synthetic=40)
  return c


# --- The preparer ---------------------------------------------------------------------------


def test_release_fields_in_jsonl_and_parquet(tmp_path):
  # ubaada/booksum-complete-cleaned's JSON lines: `text`, `summary` a list of summaries.
  write_jsonl(str(tmp_path / "rel" / "train.jsonl"), [
      {"bid": 1, "text": "Book one.", "summary": [{"source": "a", "text": "One.", "analysis": ""},
                                                 {"source": "b", "text": "Other."}]},
      {"bid": 2, "text": "Book two.", "summary": []},  # no summary: left out
      {"bid": 3, "text": "Book three.", "summary": "Three."}])
  # kmfoda/booksum's parquet: `chapter`, `summary_text` (its `summary` column is something else).
  table = pa.Table.from_pylist([{"bid": "9", "chapter": "Chapter nine.", "summary": "{}",
                                 "summary_text": "Nine.", "chapter_length": 2}])
  pq.write_table(table, str(tmp_path / "rel" / "validation.parquet"))
  pq.write_table(table, str(tmp_path / "rel" / "test-00000-of-00001.parquet"))
  (tmp_path / "rel" / "README.md").write_text("not a split file")
  builder = sources.prepare("booksum", str(tmp_path / "tfds"), text_glob=str(tmp_path / "rel"))
  assert {s: i.num_examples for s, i in builder.info.splits.items()} == {
      "train": 2, "validation": 1, "test": 1}
  train = sources.load_source("booksum", "train", str(tmp_path / "tfds"),
                              text_glob=str(tmp_path / "rel"))
  assert sorted(train) == ["Book one." + booksum.SEPARATOR + "One.",
                           "Book three." + booksum.SEPARATOR + "Three."]
  test = sources.load_source("booksum", "test", str(tmp_path / "tfds"),
                             text_glob=str(tmp_path / "rel"))
  assert test.records[0]["book"] == b"Chapter nine." and test.records[0]["summary"] == b"Nine."


def test_missing_field_is_a_one_line_error_and_fields_can_be_named(tmp_path):
  # salesforce/booksum's alignment files hold paths, not text.
  write_jsonl(str(tmp_path / "a" / "train.jsonl"), [{"bid": "1", "chapter_path": "x.txt",
                                                     "summary_path": "y.txt"}])
  with pytest.raises(ValueError, match=r"row 0 has no book text field .*--text_field=NAME") as e:
    sources.prepare("booksum", str(tmp_path / "tfds"), text_glob=str(tmp_path / "a"))
  assert "\n" not in str(e.value)
  os.makedirs(tmp_path / "b")
  pq.write_table(pa.Table.from_pylist([{"body": "B.", "abstract": "A."}]),
                 str(tmp_path / "b" / "train.parquet"))
  with pytest.raises(ValueError, match="no summary field .*--summary_field"):
    sources.prepare("booksum", str(tmp_path / "tfds"), text_glob=str(tmp_path / "b"),
                    text_field="body")
  docs = sources.prepare("booksum", str(tmp_path / "tfds"), text_glob=str(tmp_path / "b"),
                         text_field="body", summary_field="abstract").as_data_source("train")
  assert docs[0]["text"] == ("B." + booksum.SEPARATOR + "A.").encode()
  with pytest.raises(ValueError, match="cannot tell the split of .*notes.jsonl"):
    booksum.split_of_file("/x/notes.jsonl")


def test_cli_writes_and_prepares_the_synthetic_set(tmp_path):
  out = subprocess.run(
      [sys.executable, "-m", "infini_jax.data.booksum", "--synthetic=12",
       f"--files={tmp_path / 'stories'}", f"--data_dir={tmp_path / 'tfds'}"],
      cwd=ROOT, capture_output=True, text=True, check=True).stdout
  assert "booksum train: 12 pairs" in out and "booksum test: 3 pairs" in out
  row = json.loads((tmp_path / "stories" / "test.jsonl").read_text().splitlines()[0])
  # The summary is the book's events, in the order the book tells them.
  events = row["summary_text"].split(". ")
  at = [row["chapter"].index(e.rstrip(".")) for e in events]
  assert len(events) == 4 and at == sorted(at)


# --- The loss on the summary alone ----------------------------------------------------------


def test_finetuning_weighs_the_summary_and_eos_alone(tmp_path):
  c = runlocal(tmp_path, "finetune")
  c.data.booksum_synthetic = 6
  c.seq_len = 256  # shorter than the stories: each book keeps its last tokens
  pipeline.prepare_from_config(c.data, c.seq_len)
  docs = sources.load_source("booksum", "train", c.data.data_dir,
                             **booksum.builder_kwargs(c.data))
  it = pipeline.make_train_iterator(c.data, c.seq_len, 64, 2, seed=0)
  batch = next(it)
  summaries = {r["summary"].decode() for r in docs.records}
  for inputs, targets, mask, weights in zip(batch["inputs"], batch["targets"], batch["mask"],
                                            batch["weights"]):
    # The book is cut from the front: the example fills the window exactly, BOS first.
    assert inputs[0] == BYTE.bos_id and mask.all()
    weighed = targets[weights == 1]
    assert set(np.unique(weights)) == {0.0, 1.0} and weighed[-1] == BYTE.eos_id
    assert BYTE.decode(weighed[:-1]) in summaries  # exactly the summary, then EOS
    assert BYTE.decode(inputs[mask]).endswith(booksum.SEPARATOR + BYTE.decode(weighed[:-1]))
  # Pre-training (summary_only False) weighs every real target, the books whole.
  c.data.booksum_summary_only = False
  batch = next(pipeline.make_train_iterator(c.data, c.seq_len, 64, 2, seed=0))
  np.testing.assert_array_equal(batch["weights"], batch["mask"].astype(np.float32))


# --- ROUGE and the evaluator ----------------------------------------------------------------


def test_rouge_matches_counts_derived_by_hand():
  # 1. Six tokens each, one word swapped. Unigrams: the x2, cat, on, mat shared -> 5/6 each way.
  # Bigrams (5 each): "the cat", "on the", "the mat" shared -> 3/5. Longest common
  # subsequence "the cat on the mat" -> 5/6.
  got = summarise.rouge(["The cat sat on the mat."], ["the cat lay on the mat"])
  assert got["rouge1"] == pytest.approx(5 / 6) and got["rouge2"] == pytest.approx(3 / 5)
  assert got["rougeL"] == pytest.approx(5 / 6)
  assert got["overall"] == pytest.approx((5 / 6 * 3 / 5 * 5 / 6) ** (1 / 3))
  # 2. A short prediction: 4 of its 4 unigrams in the 9 of the reference (bob counted once):
  # P 1, R 4/9, F 8/13. Bigrams: only "bob gave" of its 3, of the reference's 8: F = 2/11.
  # LCS "bob gave a apple" = 4: as unigrams, 8/13.
  ref, pred = "Alice met Bob. Bob gave Alice a red apple.", "Bob gave a apple"
  got = summarise.rouge([ref], [pred])
  assert (got["rouge1"], got["rouge2"], got["rougeL"]) == pytest.approx((8 / 13, 2 / 11, 8 / 13))
  # Over both pairs: the means, then their geometric mean.
  both = summarise.rouge(["The cat sat on the mat.", ref], ["the cat lay on the mat", pred])
  means = [(5 / 6 + 8 / 13) / 2, (3 / 5 + 2 / 11) / 2, (5 / 6 + 8 / 13) / 2]
  assert both["overall"] == pytest.approx(math.prod(means) ** (1 / 3))
  assert summarise.rouge(["a b c"], ["x y"])["overall"] == 0.0


def test_summarise_streams_a_book_longer_than_training_through_the_memory(tmp_path):
  c = runlocal(tmp_path, "finetune")
  c.seq_len = 128  # the tiny model's training length; the test stories are ~700 bytes
  pipeline.prepare_from_config(c.data, c.seq_len)
  model = InfiniTransformer(configlib.model_config(c), rngs=nnx.Rngs(0))
  ev = summarise.Summarise(c, max_documents=2, max_new_tokens=12, max_input_tokens=0,
                           chunk_segments=2, progress=False)
  got = dict(ev.run(model))
  assert got["input_tokens"] > 4 * c.seq_len and got["documents"] == 2
  assert 0 < got["summary_tokens"] <= 12
  for k in ("rouge1", "rouge2", "rougeL", "overall"):
    assert math.isfinite(got[k]) and 0 <= got[k] <= 1
  # max_input_tokens keeps the book's first tokens.
  book = ev.books()[0][0]
  np.testing.assert_array_equal(booksum.prompt(book, BYTE, 100)[1:101], BYTE.encode(book)[:100])
  assert len(booksum.prompt(book, BYTE, 100)) == 1 + 100 + len(booksum.SEPARATOR)
  c.data.name = "text_files"
  with pytest.raises(ValueError, match="set data.name='booksum'"):
    summarise.Summarise(c)


# --- The config -----------------------------------------------------------------------------


def test_config_follows_the_paper():
  pre, ft = load_config("stage=pretrain"), load_config("stage=finetune")
  assert pre.train.steps == 30_000  # "30K steps" in the paper's text
  assert (pre.seq_len, ft.seq_len) == (8192, 32768)
  s = ft.evals.summarise
  assert (s.temperature, s.top_p, s.max_new_tokens, s.max_input_tokens) == (0.5, 0.95, 1024,
                                                                             500_000)
  assert ft.data.name == "booksum" and ft.data.booksum_summary_only


def test_runlocal_runs_both_stages_and_the_evaluator(tmp_path):
  pre = runlocal(tmp_path, "pretrain")
  pre.train.update(steps=3, log_every=1, checkpoint_every=3, peak_flops=1e11)
  pre.optimizer.warmup_steps = 1
  done = trainer.train_and_evaluate(pre, str(tmp_path / "pre"))
  assert done["step"] == 3 and math.isfinite(done["loss"])
  ft = runlocal(tmp_path, "finetune")
  ft.train.update(steps=3, log_every=1, checkpoint_every=3, peak_flops=1e11)
  ft.optimizer.warmup_steps = 1
  ft.init_from = str(tmp_path / "pre" / "checkpoints")
  done = trainer.train_and_evaluate(ft, str(tmp_path / "ft"))
  assert done["step"] == 3 and math.isfinite(done["loss"])
  ft.evals.summarise.update(max_documents=1, max_new_tokens=8, progress=False)
  got = report.evaluate_checkpoint(ft, str(tmp_path / "ft"), only=("summarise",))["summarise"]
  assert got["summary_tokens"] > 0 and got["input_tokens"] > ft.seq_len
  assert all(0 <= got[k] <= 1 for k in ("rouge1", "rouge2", "rougeL", "overall"))
  assert os.path.exists(tmp_path / "ft" / "eval" / "3" / "summarise.json")
