"""Tokenizers: byte ids and specials, a tiny SentencePiece model round-trips text, clear errors."""

import numpy as np
import pytest
from absl import flags
from ml_collections import ConfigDict

import infini_jax.data as data
from infini_jax.data import passkey
from infini_jax.data import tokenizer as toklib
from infini_jax.data.tokenizer import ByteTokenizer, SentencePieceTokenizer, get_tokenizer

TEXT = "def f(x):\n\treturn x  # héllo, 日本 😀\n\n"


@pytest.fixture(scope="module")
def sp_model(tmp_path_factory):
  """A 400-piece model trained on a few lines of test text (about 50 ms)."""
  docs = [f"line {i}: the grass is green and the sky is blue; x = {i} * 3\n    return x\n"
          * 5 for i in range(50)] + [passkey.INSTRUCTION + passkey.FILLER * 20]
  out = tmp_path_factory.mktemp("spm") / "tiny.model"
  toklib.train_sentencepiece(docs, vocab_size=400, out=out)
  return out


def test_byte_tokenizer_ids_and_specials():
  tok = get_tokenizer("byte")
  assert (tok.vocab_size, tok.pad_id, tok.bos_id, tok.eos_id) == (259, 256, 257, 258)
  ids = tok.encode(TEXT)
  assert ids == list(TEXT.encode("utf-8")) and max(ids) < 256
  assert tok.encode_array(TEXT).dtype == np.int32
  assert tok.encode_array(TEXT).tolist() == ids
  assert tok.decode([tok.bos_id] + ids + [tok.eos_id, tok.pad_id]) == TEXT
  assert tok.decode([0xE6]) == "\ufffd"  # A lone lead byte is replaced, not an exception.


def test_sentencepiece_round_trips(sp_model):
  tok = get_tokenizer(str(sp_model))
  assert isinstance(tok, SentencePieceTokenizer)
  specials = {tok.pad_id, tok.bos_id, tok.eos_id}
  assert len(specials) == 3 and max(specials) < tok.vocab_size
  for text in [TEXT, "    indented\n\n\ttabs  and  spaces ", "unseen: Ωμέγα ✓"]:
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert max(ids) < tok.vocab_size and not specials & set(ids)
    assert tok.decode([tok.bos_id] + ids + [tok.eos_id, tok.pad_id]) == text
  assert tok.encode_array(TEXT).tolist() == tok.encode(TEXT)


def test_tokenizer_cli_trains_from_text_files(tmp_path):
  corpus = tmp_path / "corpus"
  corpus.mkdir()
  for i in range(30):
    (corpus / f"doc{i}.txt").write_text(f"document {i}: the quick brown fox {i * 7}\n" * 20)
  out = tmp_path / "spm" / "tiny.model"
  fv = flags.FlagValues()  # the command's own flags, as `python -m infini_jax.data.tokenizer`
  toklib._define_flags(fv)
  argv = fv(["tokenizer", "train", "--dataset=text_files", f"--text_dir={corpus}",
             f"--data_dir={tmp_path / 'tfds'}", "--vocab_size=320", f"--out={out}"])
  toklib._main(argv, fv)
  tok = get_tokenizer(str(out))
  assert tok.decode(tok.encode("the quick brown fox 42")) == "the quick brown fox 42"


def test_bad_tokenizer_names_say_what_to_do(tmp_path):
  with pytest.raises(ValueError, match="'byte' or the path of a SentencePiece"):
    get_tokenizer("gpt2")
  missing = tmp_path / "nope.model"
  with pytest.raises(FileNotFoundError, match="nope.model.*infini_jax.data.tokenizer train"):
    get_tokenizer(str(missing))


def test_byte_tokenizer_is_the_default_type():
  assert isinstance(get_tokenizer("byte"), ByteTokenizer)


def test_passkey_length_with_sentencepiece_is_within_tolerance(sp_model):
  tok = get_tokenizer(str(sp_model))
  for length, position in [(600, "start"), (1500, "middle"), (3000, "end")]:
    ex = passkey.make_passkey_example(length, position, 5, np.random.default_rng(1), tok)
    assert abs(len(tok.encode(ex["prompt"])) - length) <= passkey.SPM_LENGTH_TOLERANCE
    assert ex["prompt"].endswith(passkey.QUESTION)
    assert f"The pass key is {ex['answer']}." in ex["prompt"]


def test_token_records_refuse_a_sentencepiece_model_changed_since_prepare(tmp_path):
  """Records are SentencePiece ids of the model they were made with; a model retrained at the
  same path would read them as other pieces, so a run with it is refused and told the fix."""
  corpus = tmp_path / "corpus"
  corpus.mkdir()
  lines = [f"document {i}: the quick brown fox jumps over {i * 7} lazy dogs\n" for i in range(40)]
  for i in range(40):
    (corpus / f"doc{i}.txt").write_text(lines[i] * 10)
  model = tmp_path / "spm" / "tok.model"
  tok = toklib.train_sentencepiece(lines, vocab_size=300, out=model)
  cfg = ConfigDict({"name": "text_files", "data_dir": str(tmp_path / "tfds"),
                    "tokenizer": str(model), "text_glob": str(corpus), "train_split": "train",
                    "num_epochs": None})
  data.prepare_from_config(cfg)
  records = data.open_tokens(cfg, "train")
  texts = data.load_source("text_files", "train", cfg.data_dir, text_glob=str(corpus))
  assert records.info["tokenizer"] == tok.fingerprint and tok.fingerprint.startswith("spm-")
  assert records.document(0).tolist() == [tok.bos_id] + tok.encode(texts[0]) + [tok.eos_id]
  toklib.train_sentencepiece(lines, vocab_size=320, out=model)  # retrained in place
  for use in (lambda: data.make_train_iterator(cfg, 64, 16, 2, seed=0),
              lambda: data.prepare_from_config(cfg)):
    with pytest.raises(ValueError, match=r"made by tokenizer spm-\w+ .*delete .*tokenize again"):
      use()
