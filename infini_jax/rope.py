"""RoPE frequencies: the plain geometric series, or Llama 3.1/3.2's "llama3" rescaling of it.

Axis legend: H head dim; the frequencies are one per rotated pair of dims, [H/2].

Llama 3.1 and 3.2 were trained with RoPE whose low frequencies (long wavelengths) are divided by a
factor, high frequencies kept, and the band between interpolated smoothly (Meta's
`apply_scaling`, Hugging Face's `rope_type: "llama3"`). The rescaling changes the frequencies at
every position, so a converted Llama-3.2-1B reproduces its own logits only with it, even though
segment positions here never exceed the segment length.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import jax.numpy as jnp

from infini_jax.sections import is_finite, need

SCALINGS = ("none", "llama3")


@dataclasses.dataclass(frozen=True)
class RoPE:
  """model.rope: the base `theta` of the frequencies, and their rescaling: "none", or "llama3"
  as in Llama 3.1 and 3.2, with its settings (used only with scaling="llama3"; see Scaling)."""

  theta: float = 10_000.0
  scaling: str = "none"
  factor: float = 1.0
  low_freq_factor: float = 1.0
  high_freq_factor: float = 4.0
  original_max_len: int = 8192

  def __post_init__(self):
    need(self.scaling in SCALINGS, "rope.scaling", self.scaling, f"use one of {SCALINGS}")
    need(is_finite(self.theta) and self.theta > 1, "rope.theta", self.theta,
         "must be a number > 1 (10000 as in the paper, 500000 for Llama 3)")
    if self.scaling == "llama3":
      need(is_finite(self.factor) and self.factor >= 1, "rope.factor", self.factor,
           "must be >= 1 (32 for Llama-3.2-1B, 8 for Llama-3.1)")
      need(self.high_freq_factor > self.low_freq_factor > 0, "rope.high_freq_factor",
           self.high_freq_factor, f"must exceed model.rope.low_freq_factor="
           f"{self.low_freq_factor} > 0")
      need(self.original_max_len > 0, "rope.original_max_len", self.original_max_len,
           "must be positive (8192 for Llama 3)")


class Scaling(NamedTuple):
  """The llama3 rescaling's settings (Hugging Face config.json: rope_scaling / rope_parameters)."""

  factor: float  # low frequencies are divided by this (32 for Llama-3.2-1B, 8 for Llama-3.1)
  low_freq_factor: float  # wavelengths above original_max_len / low_freq_factor: divided
  high_freq_factor: float  # wavelengths below original_max_len / high_freq_factor: kept
  original_max_len: int  # the pre-training context of the un-rescaled model (8192)


def scaling_of(rope: RoPE) -> Scaling | None:
  """The rescaling model.rope asks for, or None (plain RoPE)."""
  if rope.scaling == "none":
    return None
  return Scaling(rope.factor, rope.low_freq_factor, rope.high_freq_factor, rope.original_max_len)


def frequencies(head_dim: int, theta: float, scaling: Scaling | None = None) -> jnp.ndarray:
  """Angular frequencies [H/2] float32: theta^(-2i/H), then the llama3 rescaling if given.

  The plain series is computed exactly as attention.rope always has (bit-identical without
  scaling); the rescaling follows Hugging Face's `_compute_llama3_parameters` step for step.
  """
  H = head_dim
  freq = theta ** (-jnp.arange(0, H // 2, dtype=jnp.float32) * 2.0 / H)  # [H/2]
  if scaling is None:
    return freq
  factor, low, high, old_len = scaling  # high > low: checked by RoPE
  wavelen = 2 * math.pi / freq  # [H/2]
  long_wave = wavelen > old_len / low  # far beyond the pre-training context: interpolate fully
  short_wave = wavelen < old_len / high  # well inside it: keep
  smooth = (old_len / wavelen - low) / (high - low)  # 0 at the long edge, 1 at the short edge
  scaled = jnp.where(long_wave, freq / factor, freq)
  between = (1 - smooth) * scaled / factor + smooth * scaled
  return jnp.where(~long_wave & ~short_wave, between, scaled)
