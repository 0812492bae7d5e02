"""The `summarise` evaluator (the paper's Table 4): stream a book through the memory, decode its
summary, score it with ROUGE.

Each held-out book is fed through `generate.Decoder` (`[BOS] + book + SEPARATOR`, in chunks of
`chunk_segments` segments: a 500K-token book takes the memory of a short one), then the summary
is sampled token by token until EOS or `max_new_tokens`, with the paper's settings by default
(temperature 0.5, top-p 0.95, up to 1,024 tokens). Scores are ROUGE-1, ROUGE-2 and ROUGE-L
F-measures from the `rouge-score` package (Porter stemming on, as in the BookSum paper), averaged
over the books, and their geometric mean, the paper's "overall".
"""

from __future__ import annotations

import math
from typing import Iterator

import jax
import numpy as np
from flax import nnx
from tqdm import tqdm

from infini_jax import generate
from infini_jax.data import booksum, sources
from infini_jax.data.tokenizer import get_tokenizer

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


def rouge(references: list[str], predictions: list[str], stemmer: bool = True) -> dict[str, float]:
  """Mean ROUGE-1/2/L F-measure over (reference, prediction) pairs, and their geometric mean
  `overall`; all in [0, 1]."""
  if len(references) != len(predictions) or not references:
    raise ValueError(f"rouge needs as many predictions as references, at least one; got "
                     f"{len(predictions)} and {len(references)}")
  # Imported here: rouge_score loads nltk, seconds that every importer of evaluate.py would pay.
  from rouge_score import rouge_scorer  # noqa: PLC0415

  scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=stemmer)
  scores = [scorer.score(r, p) for r, p in zip(references, predictions)]
  out = {t: float(np.mean([s[t].fmeasure for s in scores])) for t in ROUGE_TYPES}
  out["overall"] = math.prod(out[t] for t in ROUGE_TYPES) ** (1 / len(ROUGE_TYPES))
  return out


class Summarise:
  """Book summarisation on `split` of data.name='booksum' (see the module docstring).

  max_documents: books scored, in the stored order. max_input_tokens: a longer book keeps its
  first ones (the paper evaluates at 500K; 0 keeps all). Metrics: rouge1, rouge2, rougeL,
  overall, and per book on average input_tokens and summary_tokens (decoded, EOS excluded).
  """

  def __init__(self, config, split: str = "test", max_documents: int = 8,
               max_input_tokens: int = 500_000, max_new_tokens: int = 1024,
               temperature: float = 0.5, top_p: float = 0.95, chunk_segments: int = 16,
               seed: int = 0, stemmer: bool = True, progress: bool = True,
               during_training: bool = False, kind: str = ""):
    del kind
    if config.data.name != "booksum":
      raise ValueError(f"evals.summarise reads BookSum: set data.name='booksum' (got "
                       f"{config.data.name!r}), or drop the evaluator")
    if max_documents < 1 or max_new_tokens < 1 or max_input_tokens < 0:
      raise ValueError("evals.summarise needs max_documents >= 1, max_new_tokens >= 1 and "
                       f"max_input_tokens >= 0; got {max_documents}, {max_new_tokens}, "
                       f"{max_input_tokens}")
    if temperature < 0 or not 0 < top_p <= 1:
      raise ValueError(f"evals.summarise needs temperature >= 0 and 0 < top_p <= 1; got "
                       f"{temperature}, {top_p}")
    self.data, self.split, self.max_documents = config.data, split, max_documents
    self.max_input_tokens, self.max_new_tokens = max_input_tokens, max_new_tokens
    self.temperature, self.top_p, self.seed = temperature, top_p, seed
    self.chunk_segments, self.stemmer, self.progress = chunk_segments, stemmer, progress
    self.during_training = during_training
    self.tokenizer = get_tokenizer(config.data.tokenizer)

  def books(self) -> list[tuple[str, str]]:
    """(book, reference summary) of the first max_documents pairs of the split."""
    docs = sources.load_source("booksum", self.split, self.data.data_dir,
                               **booksum.builder_kwargs(self.data))
    records = [docs.records[i] for i in range(min(self.max_documents, len(docs)))]
    return [(booksum.text_of(r["book"]), booksum.text_of(r["summary"])) for r in records]

  def summarise(self, decoder: generate.Decoder, prompt: np.ndarray, key: jax.Array,
                progress=None) -> np.ndarray:
    """Feeds prompt [P] (BOS first), then samples until EOS -> the summary's ids [<= max_new]."""
    logits, stream = decoder.feed(decoder.start(1), prompt[None], progress)
    out = []
    for _ in range(self.max_new_tokens):
      key, sub = jax.random.split(key)
      token = int(generate.sample(logits, sub, temperature=self.temperature, top_p=self.top_p)[0])
      if token == self.tokenizer.eos_id:
        break
      out.append(token)
      logits, stream = decoder.step(stream, np.array([token], np.int32))
    return np.array(out, np.int32)

  def run(self, model: nnx.Module) -> Iterator[tuple[str, float]]:
    if self.tokenizer.vocab_size > model.cfg.shape.vocab_size:
      raise ValueError(f"the tokenizer has {self.tokenizer.vocab_size} ids but "
                       f"model.shape.vocab_size is {model.cfg.shape.vocab_size}: use the "
                       "tokenizer the model was trained with")
    decoder = generate.Decoder(model, self.chunk_segments)
    pairs = self.books()
    prompts = [booksum.prompt(book, self.tokenizer, self.max_input_tokens) for book, _ in pairs]
    key = jax.random.key(self.seed)
    predictions, made = [], []
    with tqdm(total=sum(map(len, prompts)), unit="tok", unit_scale=True, desc="summarise",
              leave=False, disable=not self.progress) as bar:
      for prompt in prompts:
        key, sub = jax.random.split(key)
        ids = self.summarise(decoder, prompt, sub, bar.update)
        predictions.append(self.tokenizer.decode(ids))
        made.append(len(ids))
    yield from rouge([s for _, s in pairs], predictions, self.stemmer).items()
    yield "input_tokens", float(np.mean([len(p) for p in prompts]))
    yield "summary_tokens", float(np.mean(made))
    yield "documents", float(len(pairs))
