"""Books from the Brotli sdist as a text_files corpus, and the passkey filler drawn from text."""

import io
import os
import tarfile

import numpy as np
import pytest
from ml_collections import ConfigDict

from configs import books_lm, books_passkey
from infini_jax.data import books, passkey, pipeline, text_files
from infini_jax.data.tokenizer import ByteTokenizer

# Each book a distinct vocabulary, so a prompt's words say which book they came from.
WORDS = {"alice29": "rabbit", "lcet10": "archive", "asyoulik": "forest", "plrabn12": "serpent"}


def _fake_sdist(path):
  """A .tar.gz laid out as Brotli's sdist: the four books under tests/testdata, CRLF lines."""
  with tarfile.open(path, "w:gz") as tar:
    for stem, word in WORDS.items():
      data = "\r\n".join(f"{word} {i} {word}." for i in range(400)).encode("ascii")
      info = tarfile.TarInfo(f"Brotli-1.1.0/tests/testdata/{stem}.txt")
      info.size = len(data)
      tar.addfile(info, io.BytesIO(data))
  return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  root = tmp_path_factory.mktemp("books")
  sdist = _fake_sdist(str(root / "Brotli-1.1.0.tar.gz"))
  out = str(root / "books")
  return out, books.prepare(sdist, out)


def test_prepare_puts_each_book_in_its_split(corpus):
  out, written = corpus
  assert set(written) == set(books.BOOKS)
  for stem, rel in written.items():
    assert text_files.split_of(rel) == books.BOOKS[stem]  # what the text_files builder will read
    with open(os.path.join(out, rel), "rb") as f:
      data = f.read()
    assert b"\r" not in data and data.startswith(WORDS[stem].encode())
  for split in text_files.SPLITS:
    got = {os.path.basename(os.path.dirname(f)) + "/" + os.path.basename(f)
           for f in books.book_files(out, split)}
    assert got == {rel for stem, rel in written.items() if books.BOOKS[stem] == split}


def test_missing_books_name_the_fetch_command(tmp_path):
  os.makedirs(tmp_path / "src")
  with pytest.raises(FileNotFoundError, match=r"pip download .*brotli==1\.1\.0"):
    books.prepare(str(tmp_path / "src"), str(tmp_path / "out"))


def test_text_filler_comes_from_the_split_books_only(corpus):
  out, _ = corpus
  tok = ByteTokenizer()
  for split, own in (("train", {"rabbit", "archive"}), ("test", {"serpent"})):
    stream = passkey.filler_tokens("text", out, split, tok)
    for i in range(3):
      ex = passkey.make_passkey_example(600, "middle", 5, passkey.example_rng(0, split, i), tok,
                                        stream)
      assert len(tok.encode(ex["prompt"])) == 600  # bytes: exact length, as with the default
      assert passkey.KEY_LINE.format(key=ex["answer"]) in ex["prompt"]
      filler = ex["prompt"].replace(passkey.INSTRUCTION, "").replace(passkey.QUESTION, "")
      words = {w for w in set(WORDS.values()) if w in filler}
      assert words and words <= own, (split, words)
      assert "grass is green" not in filler
  # Different examples start at different places of the book.
  a, b = (passkey.make_passkey_example(300, "end", 5, passkey.example_rng(0, "test", i), tok,
                                       passkey.filler_tokens("text", out, "test", tok))["prompt"]
          for i in (0, 1))
  assert a != b


def test_default_filler_is_unchanged():
  tok = ByteTokenizer()
  ex = passkey.make_passkey_example(500, "random", 5, passkey.example_rng(3, "train", 0), tok)
  line = passkey.KEY_LINE.format(key=ex["answer"])
  filler = ex["prompt"][len(passkey.INSTRUCTION):-len(passkey.QUESTION)].replace(line, "")
  assert filler == (passkey.FILLER * 10)[:len(filler)]  # the five sentences, tiled from the start
  ids, answer = next(passkey.passkey_prompts(500, "random", 1, tok, seed=3, split="train"))
  assert answer == ex["answer"] and tok.decode(ids[1:]) == ex["prompt"]  # the same rng draws
  cfg = passkey.passkey_config(length=500)
  assert cfg.filler == "repeat" and "filler" not in cfg.description  # prepared names unchanged


def test_text_filler_config_and_pipeline_kwargs(corpus):
  out, _ = corpus
  with pytest.raises(ValueError, match="filler_glob"):
    passkey.passkey_config(length=500, filler="text")
  with pytest.raises(ValueError, match="use one of"):
    passkey.passkey_config(length=500, filler="lorem")
  text = passkey.passkey_config(length=500, filler="text", filler_glob=out)
  assert text.name != passkey.passkey_config(length=500).name  # prepared apart from the default
  data = ConfigDict(dict(name="passkey", tokenizer="byte", passkey_length=500,
                         passkey_eval_examples=4, passkey_seed=0, passkey_filler="text",
                         passkey_filler_glob=out))
  kwargs = pipeline.builder_kwargs(data)
  assert kwargs["filler"] == "text" and kwargs["filler_glob"] == out
  prompts = list(passkey.passkey_prompts(500, "start", 2, ByteTokenizer(), filler="text",
                                         filler_glob=out, split="test"))
  assert all("serpent" in ByteTokenizer().decode(ids) for ids, _ in prompts)


def test_configs_recipes():
  best = books_lm.get_config("memory=infini,recipe=best")
  assert best.model.infini.decay and best.model.infini.xl_cache
  assert best.model.token_shift.size == 8
  assert best.data.name == "text_files" and best.model.shape.vocab_size == books_lm.VOCAB
  xl = books_lm.get_config("memory=xl,recipe=best")
  assert xl.model.token_shift.size == 8 and not xl.model.infini.decay  # the same input
  paper = books_lm.get_config("memory=infini,recipe=paper")
  assert not paper.model.token_shift.size and paper.model.infini.gate_init == 0.0
  memorizing = books_lm.get_config("memory=memorizing").model.memorizing
  assert memorizing.memory_size == 16 * books_lm.SEGMENT
  with pytest.raises(ValueError, match="recipe one of"):
    books_lm.get_config("recipe=tuned")
  pk = books_passkey.get_config("memory=infini")
  assert pk.data.passkey_filler == "text" and pk.data.passkey_filler_glob == books_lm.TEXT_GLOB
  assert np.isclose(pk.data.answer_weight, 8.0)
  with pytest.raises(ValueError, match="use one of"):
    books_passkey.get_config("memory=memorizing")


def test_the_passkey_evaluator_cuts_filler_from_its_split_of_the_training_books(corpus):
  """With book filler the evaluator's prompts are that text, of the evaluator's split: the test
  book for the sweeps, the validation book during training (configs/passkey.py:filler=books)."""
  from configs import passkey as passkey_config
  from infini_jax import evaluate
  out, _ = corpus
  config = passkey_config.get_config("filler=books,train_len=512")
  assert config.evals.passkey_train.split == "validation"
  config.data.passkey_filler_glob = out
  seen = []

  def scorer(rows, progress):  # a model that reads the prompt and answers right
    seen.extend(ByteTokenizer().decode(p[1:]) for p, _ in rows)
    return [r for _, r in rows]

  for split, word in (("test", "serpent"), ("validation", "forest")):
    seen.clear()
    ev = evaluate.Passkey(config, lengths=(400,), positions="middle", samples=2, batch_size=2,
                          split=split)
    assert ev._cell(scorer, 400, "middle", None).tolist() == [[1.0, 1.0]] * 2
    assert len(seen) == 2 and all(word in s and "grass" not in s for s in seen)
    others = set(WORDS.values()) - {word}
    assert not any(w in s for w in others for s in seen)
  config.data.passkey_filler = "repeat"  # the default filler: the five sentences, any split
  ev = evaluate.Passkey(config, lengths=(400,), positions="middle", samples=1, batch_size=1,
                        split="validation")
  seen.clear()
  ev._cell(scorer, 400, "middle", None)
  assert "grass is green" in seen[0]
  config.data.update(passkey_filler="text", passkey_filler_glob=str(os.path.dirname(out)) + "/x")
  with pytest.raises(ValueError, match=r"no files match .*infini_jax\.data\.books"):
    evaluate.Passkey(config, lengths=(400,), positions="middle", samples=1)


def test_write_strength_reads_the_runs_book_filler_and_records_each_layers_strengths(
    corpus, make_model):
  """experiments/write_strength.py: a book-filler run's prompt is cut from the split's book, and
  the strengths come back per layer in token order, each layer's own: with w = 0 every token of
  layer l, head k writes with sigmoid(b[l, k])."""
  import jax.numpy as jnp
  from flax import nnx

  from configs import passkey as passkey_config
  from experiments import write_strength
  from infini_jax.memories.options import WriteGate
  out, _ = corpus
  config = passkey_config.get_config("filler=books,write_gate=true,train_len=512")
  config.data.passkey_filler_glob = out
  tok = ByteTokenizer()
  ids, masks, key = write_strength.prompt(config.data, 400, "test", tok)
  filler = tok.decode(ids[masks["filler"]])
  assert len(ids) == 401 and "serpent" in filler and "grass" not in filler
  assert tok.decode(ids[masks["key digits"]]) == key * 2

  model = make_model(infini=dict(write_gate=True))
  b = np.array([[2.0, -1.0], [-3.0, 0.5]], np.float32)  # [layers, kv heads]
  for _, gate in nnx.iter_graph(model):
    if isinstance(gate, WriteGate):
      gate.w[...] = jnp.zeros(gate.w.shape)
      gate.b[...] = jnp.asarray(b)
  toks = np.arange(1, 20, dtype=np.int32)  # two and a half segments of 8
  beta = write_strength.strengths(model, toks)
  assert len(beta) == 2 and all(x.shape == (19, 2) for x in beta)
  for layer in range(2):
    np.testing.assert_allclose(beta[layer], np.broadcast_to(1 / (1 + np.exp(-b[layer])), (19, 2)),
                               rtol=1e-6)
  assert WriteGate.weigh.__name__ == "weigh"  # the recording hook is undone
  share = write_strength.table(beta, {"key digits": np.arange(19) < 2})[-1]
  assert share.startswith("| key digits' share of the writes | 19 | 0.105 0.105 | 0.105 0.105 |")
