"""The paper's passkey retrieval task (PAPER.md, Table 3), generated deterministically from a seed.

A prompt is: the instruction, filler ("The grass is green. ... There and back again." repeated),
the key line ("The pass key is 71432. Remember it. 71432 is the pass key."), more filler, and the
question ("What is the pass key? The pass key is"); the answer is the key's digits, and a
document for training is `prompt + " " + answer`.

Lengths are in tokens of the tokenizer in use (bytes by default). The prompt is assembled from
separately encoded pieces, the filler cut to the exact number of tokens left, so:
- `length` is the number of tokens of the prompt (no BOS, no answer). With the byte tokenizer
  `len(tokenizer.encode(prompt)) == length` exactly. With SentencePiece, re-encoding the prompt
  text can merge or split tokens where the filler was cut and at piece joins: within
  `SPM_LENGTH_TOLERANCE` tokens of `length`.
- `key_position` is the fraction of the prompt's tokens that come before the key line. The
  instruction always comes first, so "start" gives instruction / length, not 0.
- Positions: a fraction in [0, 1] of the filler placed before the key line, or "start" (0),
  "middle" (0.5), "end" (1, the key line right before the question), or "random" (uniform per
  example, what fine-tuning uses).

Filler: `filler="repeat"` (the default, the paper's) tiles FILLER. `filler="text"` takes a
contiguous passage of real text instead: the files of a `text_files` corpus (`filler_glob`, e.g.
the books of `infini_jax.data.books`), those whose `text_files.split_of` is the example's split,
joined into one token stream; each example starts at a random offset and wraps around at the end
(a prompt longer than the split's text repeats it). Train, validation and test prompts so draw
their filler from disjoint files, and a model cannot learn to skip one known filler.

Example i of split s is drawn from `np.random.default_rng([seed, SPLIT_STREAM[s], i])`: the splits
never share keys, any example can be made alone, and `passkey_prompt(..., split="test")` yields
the same examples as the prepared test split.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
from collections.abc import Iterator

import numpy as np
import tensorflow_datasets as tfds

from infini_jax.data import text_files
from infini_jax.data.local_builder import LocalBuilder
from infini_jax.data.tokenizer import Tokenizer, get_tokenizer

INSTRUCTION = ("There is an important info hidden inside a lot of irrelevant text. Find it and "
               "memorize it. I will quiz you about the important information there.")
FILLER = (" The grass is green. The sky is blue. The sun is yellow. Here we go. "
          "There and back again.")
KEY_LINE = " The pass key is {key}. Remember it. {key} is the pass key."
QUESTION = " What is the pass key? The pass key is"
NAMED_POSITIONS = {"start": 0.0, "middle": 0.5, "end": 1.0}
SPLIT_STREAM = {"train": 0, "validation": 1, "test": 2}
SPM_LENGTH_TOLERANCE = 8
FILLERS = ("repeat", "text")


@functools.lru_cache(maxsize=8)
def _text_filler(filler_glob: str, split: str, tokenizer: Tokenizer) -> np.ndarray:
  try:
    root, files = text_files.expand_text_glob(filler_glob)
  except ValueError:
    raise ValueError(f"passkey filler: no files match {filler_glob!r}; prepare the books "
                     "(python -m infini_jax.data.books) or point data.passkey_filler_glob at a "
                     "folder of UTF-8 text files") from None
  chosen = [f for f in files
            if text_files.split_of(os.path.relpath(f, root).replace(os.sep, "/")) == split]
  if not chosen:
    raise ValueError(f"passkey filler: {filler_glob!r} has no {split} file (its split is a hash "
                     "of the path, as in text_files); add files or point filler_glob elsewhere")
  # One space between files, and runs of whitespace as one space: prompts are one paragraph.
  text = " " + " ".join(" ".join(text_files.read_text_file(f).split()) for f in chosen)
  return tokenizer.encode_array(text)


def filler_tokens(filler: str, filler_glob: str, split: str, tokenizer: Tokenizer) -> np.ndarray:
  """The token stream filler is cut from: FILLER's tokens, or the split's text (see above)."""
  if filler == "repeat":
    return tokenizer.encode_array(FILLER)
  if filler == "text":
    if not filler_glob:
      raise ValueError("passkey filler 'text' needs filler_glob: a folder or glob of UTF-8 text "
                       "files, e.g. data/books (python -m infini_jax.data.books)")
    if split not in SPLIT_STREAM:
      raise ValueError(f"passkey split {split!r}: use one of {sorted(SPLIT_STREAM)}")
    return _text_filler(os.path.abspath(os.path.expanduser(filler_glob)), split, tokenizer)
  raise ValueError(f"passkey filler {filler!r}: use one of {FILLERS}")


def position_fraction(position: str | float, rng: np.random.Generator) -> float:
  """A position (fraction, 'start', 'middle', 'end', 'random') as a fraction in [0, 1]."""
  if isinstance(position, str):
    if position == "random":
      return float(rng.random())
    if position in NAMED_POSITIONS:
      return NAMED_POSITIONS[position]
    try:
      position = float(position)
    except ValueError:
      raise ValueError(f"passkey position {position!r}: use a fraction in [0, 1] or one of "
                       f"{sorted(NAMED_POSITIONS) + ['random']}") from None
  if not 0.0 <= position <= 1.0:
    raise ValueError(f"passkey position {position} must be in [0, 1]")
  return float(position)


def make_passkey_example(length: int, position: str | float, digits: int,
                         rng: np.random.Generator, tokenizer: Tokenizer,
                         filler: np.ndarray | None = None) -> dict:
  """One prompt of `length` tokens with a random `digits`-digit key at `position`.

  filler: the token stream to cut the filler from (`filler_tokens`); None: FILLER repeated,
  tiled from its start. A longer stream (text) is read from a random offset, wrapping around.

  Returns dict(prompt, text=prompt + " " + answer, answer (digits), key_position, length).
  Built from a few encoded pieces and a tiled filler, so 1M-token prompts take well under a
  second with the byte tokenizer.
  """
  if digits < 1:
    raise ValueError(f"passkey digits must be >= 1, got {digits}")
  key = str(rng.integers(10 ** (digits - 1), 10 ** digits))
  fraction = position_fraction(position, rng)
  key_line = KEY_LINE.format(key=key)
  n_instruction = len(tokenizer.encode(INSTRUCTION))
  n_fixed = n_instruction + len(tokenizer.encode(key_line)) + len(tokenizer.encode(QUESTION))
  n_filler = length - n_fixed
  if n_filler < 0:
    raise ValueError(
        f"passkey length {length} is too short: the instruction, the key line with {digits} "
        f"digits and the question alone take {n_fixed} tokens; use a length >= {n_fixed}")
  if filler is None:
    unit = tokenizer.encode_array(FILLER)
    filler = np.tile(unit, -(-n_filler // len(unit)))[:n_filler]
  else:  # drawn after the key and the position, so the default examples are unchanged
    start = int(rng.integers(len(filler)))
    filler = np.take(filler, np.arange(start, start + n_filler), mode="wrap")
  n_before = int(round(fraction * n_filler))
  before, after = tokenizer.decode(filler[:n_before]), tokenizer.decode(filler[n_before:])
  prompt = INSTRUCTION + before + key_line + after + QUESTION
  return {
      "prompt": prompt,
      "text": prompt + " " + key,
      "answer": key,
      "key_position": (n_instruction + n_before) / length,
      "length": length,
  }


def prompt_parts(prompt: str, key: str) -> dict[str, np.ndarray]:
  """Character masks [len(prompt)] of a prompt's parts: filler, the key's digits (both copies),
  the rest of the key line, and the question. The instruction is in none; no character is in
  two. With the byte tokenizer a character is a token, so these mask token-level records."""
  n = len(prompt)
  line = KEY_LINE.format(key=key)
  start, question = prompt.index(line), prompt.index(QUESTION)
  masks = {name: np.zeros(n, bool) for name in ("filler", "key digits", "key line", "question")}
  masks["question"][question:] = True
  masks["key line"][start:start + len(line)] = True
  for i in (line.index(key), line.rindex(key)):
    masks["key digits"][start + i:start + i + len(key)] = True
  masks["key line"] &= ~masks["key digits"]
  masks["filler"][len(INSTRUCTION):question] = True
  masks["filler"] &= ~(masks["key line"] | masks["key digits"])
  return masks


def example_rng(seed: int, split: str, index: int) -> np.random.Generator:
  return np.random.default_rng([seed, SPLIT_STREAM[split], index])


def passkey_prompts(length: int, position: str | float, num_samples: int, tokenizer: Tokenizer,
                    *, digits: int = 5, seed: int = 0, split: str = "test",
                    filler: str = "repeat",
                    filler_glob: str = "") -> Iterator[tuple[np.ndarray, str]]:
  """(prompt ids: int32 [1 + ~length], BOS first; answer digits) for the passkey evaluator.

  No dataset to prepare: examples are made on the fly (the same ones as the prepared `split`).
  The ids are the tokenizer's own encoding of the prompt text. filler, filler_glob: see above
  (with "text", the filler comes from `split`'s files).
  """
  stream = None if filler == "repeat" else filler_tokens(filler, filler_glob, split, tokenizer)
  for i in range(num_samples):
    ex = make_passkey_example(length, position, digits, example_rng(seed, split, i), tokenizer,
                              stream)
    ids = tokenizer.encode_array(ex["prompt"])
    yield np.concatenate([np.array([tokenizer.bos_id], np.int32), ids]), ex["answer"]


@dataclasses.dataclass
class PasskeyConfig(tfds.core.BuilderConfig):
  """A passkey dataset: `num_examples` train and `num_eval_examples` validation/test prompts."""

  length: int = 4096
  position: str = "random"
  digits: int = 5
  num_examples: int = 1000
  num_eval_examples: int = 100
  seed: int = 0
  tokenizer: str = "byte"
  # Each prompt is up to `jitter` tokens shorter than `length` (uniformly), so that in a window
  # of fixed length the answer does not always sit at the same offset of the same segment.
  jitter: int = 0
  filler: str = "repeat"
  filler_glob: str = ""


def passkey_config(length: int = 4096, position: str | float = "random", digits: int = 5,
                   num_examples: int = 1000, num_eval_examples: int = 100, seed: int = 0,
                   tokenizer: str = "byte", jitter: int = 0, filler: str = "repeat",
                   filler_glob: str = "") -> PasskeyConfig:
  """A config named by its parameters, so different settings share a data_dir without clashing."""
  position_fraction(position, np.random.default_rng(0))  # Fail early on a bad position.
  if not 0 <= jitter < length:
    raise ValueError(f"passkey jitter {jitter} must be in [0, length={length})")
  if filler not in FILLERS:
    raise ValueError(f"passkey filler {filler!r}: use one of {FILLERS}")
  if filler == "text" and not filler_glob:
    raise ValueError("passkey filler 'text' needs filler_glob (e.g. data/books)")
  params = dict(length=int(length), position=str(position), digits=int(digits),
                num_examples=int(num_examples), num_eval_examples=int(num_eval_examples),
                seed=int(seed), tokenizer=get_tokenizer(tokenizer).fingerprint)
  if jitter:  # only then: the datasets prepared without it keep their names
    params["jitter"] = int(jitter)
  if filler != "repeat":  # likewise
    params["filler"] = filler
    params["filler_glob"] = os.path.abspath(os.path.expanduser(filler_glob))
  digest = hashlib.sha1(json.dumps(params, sort_keys=True).encode()).hexdigest()[:10]
  return PasskeyConfig(name=f"len{length}_{digest}", description=json.dumps(params),
                       **{**params, "tokenizer": str(tokenizer)})


class Passkey(LocalBuilder, skip_registration=True):
  """Synthetic passkey retrieval prompts (see passkey.py); answers stored with each example."""

  name = "passkey"
  VERSION = tfds.core.Version("1.0.0")
  BUILDER_CONFIGS = [PasskeyConfig(name="default")]

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=self.__doc__,
        features=tfds.features.FeaturesDict({
            "text": tfds.features.Text(),
            "id": tfds.features.Text(),
            "answer": tfds.features.Text(),
            "key_position": np.float32,
            "length": np.int64,
        }),
        metadata=tfds.core.MetadataDict(
            {k: str(v) for k, v in dataclasses.asdict(self.builder_config).items()
             if k in ("length", "position", "digits", "seed", "tokenizer", "jitter", "filler",
                      "filler_glob")}),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Generated, nothing to download.
    cfg = self.builder_config
    sizes = {"train": cfg.num_examples, "validation": cfg.num_eval_examples,
             "test": cfg.num_eval_examples}
    return {split: self._generate_examples(split, n) for split, n in sizes.items() if n > 0}

  def _generate_examples(self, split: str, count: int) -> Iterator[tuple[str, dict]]:
    cfg = self.builder_config
    tokenizer = get_tokenizer(cfg.tokenizer)
    stream = (None if cfg.filler == "repeat"
              else filler_tokens(cfg.filler, cfg.filler_glob, split, tokenizer))
    for i in range(count):
      # The jitter has a stream of its own: without it, the examples are what they always were.
      shorter = np.random.default_rng([cfg.seed, SPLIT_STREAM[split], i, 1]).integers(
          cfg.jitter + 1) if cfg.jitter else 0
      ex = make_passkey_example(cfg.length - int(shorter), cfg.position, cfg.digits,
                                example_rng(cfg.seed, split, i), tokenizer, stream)
      yield f"{split}-{i:07d}", {
          "text": ex["text"], "id": f"{split}-{i:07d}", "answer": ex["answer"],
          "key_position": ex["key_position"], "length": ex["length"]}
