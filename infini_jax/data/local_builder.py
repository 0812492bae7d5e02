"""The base of our TFDS builders: generated locally, nothing downloaded, nothing registered.

Not registered in the TFDS catalog (sources.py constructs builders by class), so importing a
module twice, or running one as a script, never collides with a name. And no checksums file:
TFDS 4.9.10 looks for one next to a builder's code through `code_path`, which needs the
`importlib_resources` backport that its own requirements install only for Python < 3.9, and
fails on a builder defined inside a package. Our builders download nothing to check.
"""

from __future__ import annotations

import tensorflow_datasets as tfds


class LocalBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """A GeneratorBasedBuilder whose data is generated on this machine (array_record)."""

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> None:
    return None
