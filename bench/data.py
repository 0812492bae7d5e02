"""Input pipeline at corpus scale: prepare once, then a run's start-up and memory stay flat.

For each corpus size (default 32 MB and 2 GB of synthetic text: random words, 1 MiB files, made
on the fly in a temporary folder) this measures, each step in a fresh process:
  - prepare: `prepare_from_config` (the TFDS text_files dataset, then the byte token records,
    tokenized on every core), MB/s of text for each stage;
  - first batch: the time from `make_train_iterator` to its first batch, and the process's
    peak RSS (imports included, the same for every size);
  - throughput: tokens/s the iterator hands over (1 prefetch thread, the trainer's setting),
    against the demo's training rate (`make train`, about 9-12K tokens/s on the 2-core CPU;
    the target is 10x), and the cost of the map alone (reading one batch's windows);
  - before, at the smallest size only: the former path, every document tokenized into one
    array at start (`train_iterator` on the texts), for the same figures.
The issue's setting: text_files, byte tokens, seq_len 4096, global batch 8.

    python -m bench.data [--sizes_mb=32,2048] [--steps=200] [--keep=DIR]

Writes bench/out/data.json (or $BENCH_OUT/data.json) and prints a table.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import types

import numpy as np
from absl import app, flags

if __package__ in (None, ""):  # `python bench/data.py`: make the repository importable.
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

FILE_BYTES = 1 << 20


def make_corpus(root: str, total_bytes: int, seed: int = 0) -> int:
  """Writes ~total_bytes of random-word text as 1 MiB files; returns the bytes written.

  One 1 MiB block of random words is made once; each file is a rotation of it, so files differ
  and generating 2 GB takes seconds.
  """
  rng = np.random.default_rng(seed)
  letters = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz", np.uint8)
  words = [rng.choice(letters, rng.integers(2, 10)).tobytes() for _ in range(5000)]
  block = b" ".join(rng.choice(np.array(words, dtype=object), 250_000))[:FILE_BYTES]
  block += b" " * (FILE_BYTES - len(block))
  os.makedirs(root, exist_ok=True)
  files = max(1, total_bytes // FILE_BYTES)
  for i in range(files):
    at = int(rng.integers(FILE_BYTES))
    with open(os.path.join(root, f"book_{i:05d}.txt"), "wb") as f:
      f.write(block[at:] + block[:at])
  return files * FILE_BYTES


def data_config(corpus: str, data_dir: str):
  from ml_collections import ConfigDict

  return ConfigDict({"name": "text_files", "data_dir": data_dir, "tokenizer": "byte",
                     "text_glob": corpus, "train_split": "train", "num_epochs": None})


def peak_rss_mib() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --- children: each step in its own process, for its own peak RSS -----------------------------


def child_prepare(args) -> dict:
  from infini_jax.data import pipeline, sources

  cfg = data_config(args.corpus, args.data_dir)
  t0 = time.perf_counter()
  sources.prepare("text_files", cfg.data_dir, text_glob=cfg.text_glob)
  t1 = time.perf_counter()
  pipeline.prepare_from_config(cfg)
  t2 = time.perf_counter()
  return {"tfds_seconds": t1 - t0, "tokenize_seconds": t2 - t1, "prepare_rss_mib": peak_rss_mib()}


def child_train(args) -> dict:
  from infini_jax.data import ByteTokenizer, load_source, pipeline

  cfg = data_config(args.corpus, args.data_dir)

  def first_batch():
    t0 = time.perf_counter()
    if args.before:  # the former path: every document tokenized into one array at start
      docs = load_source("text_files", "train", cfg.data_dir, text_glob=cfg.text_glob)
      it = pipeline.train_iterator(docs, ByteTokenizer(), args.seq_len, args.seq_len,
                                   args.batch, 0)
    else:
      it = pipeline.make_train_iterator(cfg, args.seq_len, args.seq_len, args.batch, 0)
    next(it)
    return it, time.perf_counter() - t0

  it, cold = first_batch()  # a run's start: lazy imports and cold files included
  rss = peak_rss_mib()
  first = min(first_batch()[1] for _ in range(3))  # the same again, warm: less noise
  for _ in range(16):  # what its prefetch thread made meanwhile
    next(it)
  t0 = time.perf_counter()
  for _ in range(args.steps):
    next(it)
  tokens_per_s = args.steps * args.batch * args.seq_len / (time.perf_counter() - t0)
  out = {"first_batch_seconds": cold, "warm_first_batch_seconds": first, "rss_mib": rss,
         "tokens_per_s": tokens_per_s}
  if not args.before:  # the map alone: one batch's windows read and cut, in this thread
    records = pipeline.open_tokens(cfg, "train")
    windows = pipeline.Windows(records.lengths, args.seq_len)
    cut = pipeline.CutWindows(records, windows, args.seq_len, ByteTokenizer.PAD_ID)
    ids = np.random.default_rng(0).integers(len(windows), size=(50, args.batch))
    t0 = time.perf_counter()
    for row in ids:
      cut(row)
    out["map_ms_per_batch"] = (time.perf_counter() - t0) / len(ids) * 1e3
  return out


def run_child(step: str, corpus: str, data_dir: str, args, before: bool = False) -> dict:
  cmd = [sys.executable, "-m", "bench.data", f"--child={step}", f"--corpus={corpus}",
         f"--data_dir={data_dir}", f"--steps={args.steps}", f"--batch={args.batch}",
         f"--seq_len={args.seq_len}"] + (["--before"] if before else [])
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  out = subprocess.run(cmd, cwd=root, capture_output=True, text=True)
  if out.returncode:
    raise RuntimeError(f"{step} failed:\n{out.stderr[-3000:]}")
  return json.loads(out.stdout.strip().splitlines()[-1])


# --- the parent ---------------------------------------------------------------------------------


def measure_size(size_mb: int, args, tmp: str) -> dict:
  corpus, data_dir = os.path.join(tmp, f"corpus_{size_mb}"), os.path.join(tmp, f"tfds_{size_mb}")
  t0 = time.perf_counter()
  written = make_corpus(corpus, size_mb << 20)
  generate = time.perf_counter() - t0
  prep = run_child("prepare", corpus, data_dir, args)
  train = run_child("train", corpus, data_dir, args)
  mb = written / 1e6
  row = {"corpus_mib": size_mb, "generate_seconds": round(generate, 1),
         "tfds_mb_per_s": round(mb / prep["tfds_seconds"], 1),
         "tokenize_mb_per_s": round(mb / prep["tokenize_seconds"], 1),
         "prepare_mb_per_s": round(mb / (prep["tfds_seconds"] + prep["tokenize_seconds"]), 1),
         "prepare_rss_mib": round(prep["prepare_rss_mib"]),
         "first_batch_seconds": round(train["first_batch_seconds"], 3),
         "warm_first_batch_seconds": round(train["warm_first_batch_seconds"], 3),
         "rss_mib": round(train["rss_mib"]), "tokens_per_s": round(train["tokens_per_s"]),
         "map_ms_per_batch": round(train["map_ms_per_batch"], 2)}
  if args.before_too:
    before = run_child("train", corpus, data_dir, args, before=True)
    row["before"] = {"first_batch_seconds": round(before["first_batch_seconds"], 3),
                     "warm_first_batch_seconds": round(before["warm_first_batch_seconds"], 3),
                     "rss_mib": round(before["rss_mib"]),
                     "tokens_per_s": round(before["tokens_per_s"])}
  if not args.keep:
    shutil.rmtree(corpus, ignore_errors=True)
    shutil.rmtree(data_dir, ignore_errors=True)
  print(json.dumps(row), flush=True)
  return row


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  # A copy of the flags' values: measure_size marks the first size on it.
  args = types.SimpleNamespace(**{name: flags.FLAGS[name].value for name in FLAG_NAMES})
  if args.child:
    print(json.dumps({"prepare": child_prepare, "train": child_train}[args.child](args)))
    return

  sizes = [int(s) for s in args.sizes_mb.split(",")]
  tmp = args.keep or tempfile.mkdtemp(prefix="bench_data_")
  rows = []
  try:
    for i, size in enumerate(sizes):
      args.before_too = i == 0
      rows.append(measure_size(size, args, tmp))
  finally:
    if not args.keep:
      shutil.rmtree(tmp, ignore_errors=True)
  small, large = rows[0], rows[-1]
  slowest = min(r["tokens_per_s"] for r in rows)
  result = {
      "benchmark": "data_pipeline", "dataset": "text_files, synthetic random-word text",
      "tokenizer": "byte", "global_batch": args.batch, "seq_len": args.seq_len, "rows": rows,
      "first_batch_ratio": round(large["first_batch_seconds"] / small["first_batch_seconds"], 2),
      "warm_first_batch_ratio": round(
          large["warm_first_batch_seconds"] / small["warm_first_batch_seconds"], 2),
      "rss_ratio": round(large["rss_mib"] / small["rss_mib"], 2),
      "tokens_per_s": slowest,
      "ratio_to_training": round(slowest / args.train_tokens_per_s, 1),
      "meets_target": slowest >= 10 * args.train_tokens_per_s,
  }
  from bench import common  # Here, not above: the children must not import JAX.

  path = common.write("data", result)
  print(f"wrote {path}")
  print(table(rows, result))


def table(rows: list[dict], result: dict) -> str:
  lines = ["| corpus | prepare MB/s (TFDS, tokens) | first batch (warm) | peak RSS | tokens/s "
           "| map/batch |", "|---|---|---|---|---|---|"]
  for r in rows:
    lines.append(f"| {r['corpus_mib']} MiB | {r['prepare_mb_per_s']} ({r['tfds_mb_per_s']}, "
                 f"{r['tokenize_mb_per_s']}) | {r['first_batch_seconds']} s "
                 f"({r['warm_first_batch_seconds']} s) | {r['rss_mib']} MiB"
                 f" | {r['tokens_per_s']:,} | {r['map_ms_per_batch']} ms |")
    if "before" in r:
      b = r["before"]
      lines.append(f"| {r['corpus_mib']} MiB, former path | - | {b['first_batch_seconds']} s "
                   f"({b['warm_first_batch_seconds']} s) | "
                   f"{b['rss_mib']} MiB | {b['tokens_per_s']:,} | - |")
  lines.append(f"largest/smallest: first batch {result['first_batch_ratio']}x (warm "
               f"{result['warm_first_batch_ratio']}x), peak RSS "
               f"{result['rss_ratio']}x; slowest {result['tokens_per_s']:,} tokens/s = "
               f"{result['ratio_to_training']}x training")
  return "\n".join(lines)


FLAG_NAMES = ("sizes_mb", "steps", "batch", "seq_len", "train_tokens_per_s", "keep", "child",
              "corpus", "data_dir", "before")


def define_flags():
  flags.DEFINE_string("sizes_mb", "32,2048", "Comma-separated corpus sizes in MiB.")
  flags.DEFINE_integer("steps", 200, "Batches timed for the throughput.")
  flags.DEFINE_integer("batch", 8, "Global batch size.")
  flags.DEFINE_integer("seq_len", 4096, "Tokens per sequence.")
  flags.DEFINE_float("train_tokens_per_s", 12_000, "The demo's training rate (make train), for "
                     "the ratio.")
  flags.DEFINE_string("keep", "", "Work in this folder and keep it.")
  flags.DEFINE_enum("child", "", ["", "prepare", "train"], "Internal: one measurement in this "
                    "process.")
  flags.DEFINE_string("corpus", "", "Internal: the child's corpus folder.")
  flags.DEFINE_string("data_dir", "", "Internal: the child's TFDS data directory.")
  flags.DEFINE_bool("before", False, "Internal: time the former path in this child.")


if __name__ == "__main__":
  define_flags()
  app.run(main)
