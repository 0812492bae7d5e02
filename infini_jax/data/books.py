"""Public-domain books from a PyPI package, as a `text_files` corpus with disjoint splits.

The Brotli source distribution (PyPI `brotli`, pinned below) ships the Canterbury corpus as
test data, and four of its files are Project Gutenberg etexts from 1991-1992:

  book       Gutenberg etext                                        split        ~bytes
  alice29    Lewis Carroll, Alice's Adventures in Wonderland        train        152K
  lcet10     Library of Congress Workshop on Electronic Texts,      train        427K
             Proceedings (1992)
  asyoulik   Shakespeare, As You Like It                            validation   125K
  plrabn12   Milton, Paradise Lost                                  test         482K

No other package on PyPI that we found carries whole books as plain files. The wheel does not
include the test data, so the source distribution is fetched once with pip, pinned:

    pip download --no-deps --no-binary :all: brotli==1.1.0 -d data/books_src
    python -m infini_jax.data.books --source=data/books_src --out=data/books

`--source` is that folder, the .tar.gz itself, or a folder holding the four .txt files. The
books are written as UTF-8 with LF line ends, one file per book, each under a name whose
`text_files.split_of` bucket is the split above, so the `text_files` builder (which splits by a
hash of the relative path) reads exactly this assignment: train, validation and test never share
a book. `book_files(out, split)` lists one split's files (the passkey filler of part 3 draws
train and test filler from disjoint books this way).
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
import tarfile
from collections.abc import Sequence

from infini_jax.data import text_files

PACKAGE = "brotli==1.1.0"
BOOKS = {"alice29": "train", "lcet10": "train", "asyoulik": "validation", "plrabn12": "test"}
_FETCH = f"pip download --no-deps --no-binary :all: {PACKAGE} -d data/books_src"


def book_name(stem: str, split: str) -> str:
  """`split/stem.txt`, or `split/stem_K.txt` with the smallest K whose hash bucket is `split`."""
  candidates = [f"{split}/{stem}.txt"] + [f"{split}/{stem}_{k}.txt" for k in range(1, 10_000)]
  for name in candidates:
    if text_files.split_of(name) == split:
      return name
  raise AssertionError(f"no name for {stem} hashes into {split}")


def _read_sources(source: str) -> dict[str, bytes]:
  """The four books' raw bytes from an sdist (.tar.gz), a folder holding one, or a folder of
  the .txt files."""
  wanted = {f"{stem}.txt" for stem in BOOKS}
  tarballs = [source] if source.endswith(".tar.gz") else sorted(
      glob.glob(os.path.join(source, "[Bb]rotli-*.tar.gz")))
  found: dict[str, bytes] = {}
  if tarballs:
    with tarfile.open(tarballs[-1]) as tar:
      for member in tar.getmembers():
        base = os.path.basename(member.name)
        if base in wanted and "/testdata/" in member.name and member.isfile():
          found[base[:-4]] = tar.extractfile(member).read()
  elif os.path.isdir(source):
    for base in wanted:
      path = os.path.join(source, base)
      if os.path.isfile(path):
        with open(path, "rb") as f:
          found[base[:-4]] = f.read()
  missing = sorted(set(BOOKS) - set(found))
  if missing:
    raise FileNotFoundError(
        f"{source}: no {', '.join(m + '.txt' for m in missing)}; fetch the source distribution "
        f"once with `{_FETCH}` and pass --source=data/books_src")
  return found


def prepare(source: str, out: str) -> dict[str, str]:
  """Writes the books under `out` as split/NAME.txt (UTF-8, LF). Returns {book: relative path}."""
  raw = _read_sources(source)
  written = {}
  for stem, split in BOOKS.items():
    text = raw[stem].decode("latin-1").replace("\r\n", "\n")  # ASCII in practice
    rel = book_name(stem, split)
    path = os.path.join(out, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
      f.write(text)
    written[stem] = rel
  return written


def book_files(root: str, split: str) -> list[str]:
  """The prepared books of one split under `root` (sorted paths), by the text_files split rule."""
  if split not in text_files.SPLITS:
    raise ValueError(f"split {split!r}: use one of {', '.join(text_files.SPLITS)}")
  _, files = text_files.expand_text_glob(root)
  chosen = [f for f in files
            if text_files.split_of(os.path.relpath(f, root).replace(os.sep, "/")) == split]
  if not chosen:
    raise ValueError(f"{root} has no {split} book; prepare it with python -m "
                     "infini_jax.data.books --source=... --out=" + root)
  return chosen


def _main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(prog="python -m infini_jax.data.books",
                                   description=__doc__.split("\n\n")[0])
  parser.add_argument("--source", default="data/books_src",
                      help=f"the {PACKAGE} sdist (.tar.gz), its folder, or a folder of the .txt")
  parser.add_argument("--out", default="data/books", help="folder to write the books to")
  args = parser.parse_args(argv)
  for stem, rel in prepare(args.source, args.out).items():
    size = os.path.getsize(os.path.join(args.out, rel))
    print(f"{os.path.join(args.out, rel)}: {stem} ({BOOKS[stem]}), {size:,} bytes")


if __name__ == "__main__":
  try:
    _main()
  except (ValueError, FileNotFoundError) as e:
    sys.exit(f"error: {e}")
