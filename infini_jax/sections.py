"""What the sections of the model config share (infini_jax/model_config.py): a section is a
frozen dataclass that checks its own values in `__post_init__` with `need`, so that a bad value is
refused where it is set, with a one-line message naming its key (model.SECTION.KEY)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any


def need(ok: bool, key: str, value: Any, want: str) -> None:
  """Raises ValueError("model.KEY=VALUE: WANT") unless `ok`; `want` says what to set."""
  if not ok:
    raise ValueError(f"model.{key}={value!r}: {want}")


def is_finite(x: Any) -> bool:
  return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def build(cls, values: Any, key: str):
  """The section `cls` from a mapping (a dict or ConfigDict) or an instance; an unknown key is a
  ValueError naming it and the section's keys."""
  if isinstance(values, cls):
    return values
  values = dict(values)
  names = [f.name for f in dataclasses.fields(cls)]
  unknown = sorted(set(values) - set(names))
  if unknown:
    raise ValueError(f"unknown key model.{key}.{unknown[0]}; model.{key} has {names}")
  return cls(**values)
