"""Data: TFDS builders (array_record, no TensorFlow), tokenizers and grain pipelines.

Typical use (the trainer):

    prepare_from_config(config.data, seq_len)   # dataset + token records; no-op once they exist
    it = make_train_iterator(config.data, seq_len, segment_len, global_batch, seed,
                             jax.process_index(), jax.process_count())
    batch = next(it)                          # {"inputs", "targets", "mask", "weights"}
    state = it.get_state(); it.set_state(state)           # resume exactly

The names below are re-exported lazily (PEP 562): `python -m infini_jax.data.tokenizer` then
runs its module once, not after an eager import of it, and importing the package is free.
"""

import importlib

_EXPORTS = {
    "ByteTokenizer": "tokenizer",
    "SentencePieceTokenizer": "tokenizer",
    "get_tokenizer": "tokenizer",
    "DATASETS": "sources",
    "dataset_python_version": "sources",
    "load_source": "sources",
    "prepare": "sources",
    "make_passkey_example": "passkey",
    "builder_kwargs": "pipeline",
    "iter_eval_documents": "pipeline",
    "iter_passkey_prompts": "pipeline",
    "make_train_iterator": "pipeline",
    "open_tokens": "pipeline",
    "TokenRecords": "tokens",
    "prepare_tokens": "tokens",
    "prepare_from_config": "pipeline",
    "train_iterator": "pipeline",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
  if name not in _EXPORTS:
    raise AttributeError(f"module 'infini_jax.data' has no attribute {name!r}")
  value = getattr(importlib.import_module(f"infini_jax.data.{_EXPORTS[name]}"), name)
  globals()[name] = value
  return value


def __dir__() -> list[str]:
  return sorted(list(globals()) + __all__)
