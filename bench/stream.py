"""Streaming to a million tokens: memory and time per token must not grow with the context.

1. Streaming evaluation: the perplexity evaluator (infini_jax.evaluate.Perplexity, chunks of 2048
   tokens carrying the state) over one document of 32K and of 1M tokens. Memory is the peak
   resident set (ru_maxrss) of a fresh process per length, so one run's peak cannot hide in the
   other's; it includes the host copy of the document (5 bytes a token). Target: 1M / 32K <= 1.1.
   XLA's planned device memory of the chunk step is reported too; its shapes do not depend on
   the length at all.
2. Generation: seconds per generated token (greedy, batch 1) after a context of 1K and of 1M
   tokens fed through infini_jax.generate.Decoder, timed over 4 whole segments so that the
   memory writes at segment ends are counted at both positions. Target: 1M / 1K <= 1.2.

Model: the `tiny` preset (configs/models.py) with random weights: neither memory nor time
depends on the weights' values.

  python -m bench.stream            # writes bench/out/stream.json and stream.png
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time

import jax
import numpy as np
from absl import app
from flax import nnx

from bench import common
from infini_jax import config as configlib
from infini_jax import evaluate, generate
from infini_jax.model import InfiniTransformer

SHORT_EVAL, LONG_EVAL = 32 * 1024, 1024 * 1024
SHORT_CONTEXT, LONG_CONTEXT = 1024, 1024 * 1024
CHUNK = 2048


def tiny_model() -> tuple[InfiniTransformer, object]:
  config = configlib.defaults("tiny")
  return InfiniTransformer(configlib.model_config(config), rngs=nnx.Rngs(0)), config


def peak_rss_bytes() -> int:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def child_eval(length: int) -> dict:
  """The perplexity evaluator over one synthetic document of `length` tokens."""
  model, config = tiny_model()
  ev = evaluate.Perplexity(config, max_documents=1, chunk_len=CHUNK, batch_size=1)
  rng = np.random.default_rng(0)
  ev.documents = lambda: [rng.integers(0, 256, length + 1).astype(np.int32)]
  start = time.perf_counter()
  metrics = dict(ev.run(model))
  seconds = time.perf_counter() - start
  # The evaluator's chunk step, compiled alone for XLA's memory plan.
  graphdef, params = nnx.split(model)
  step = jax.jit(lambda p, s, x, y, m: nnx.merge(graphdef, p).nll(x, y, s, m))
  x = np.zeros((1, CHUNK), np.int32)
  planned = common.compiled_bytes(step, params, model.init_state(1), x, x, x > -1)
  return dict(tokens=int(metrics["tokens"]), seconds=seconds, tokens_per_s=length / seconds,
              peak_rss_bytes=peak_rss_bytes(), xla_chunk_step_bytes=planned)


def child_generate(context: int) -> dict:
  """Seconds per greedy token at context position `context`, batch 1."""
  model, _ = tiny_model()
  decoder = generate.Decoder(model, chunk_segments=CHUNK // model.cfg.shape.segment_len)
  rng = np.random.default_rng(0)
  start = time.perf_counter()
  logits, stream = decoder.feed(decoder.start(1), rng.integers(0, 256, (1, context)))
  feed_seconds = time.perf_counter() - start
  key, n = jax.random.key(0), 4 * model.cfg.shape.segment_len

  def decode(logits, stream, steps):
    for _ in range(steps):
      token = generate.sample(logits, key)
      logits, stream = decoder.step(stream, token)
    jax.block_until_ready(logits)
    return logits, stream

  logits, stream = decode(logits, stream, n)  # Compiles, and crosses segment ends once each way.
  best = float("inf")
  for _ in range(3):
    start = time.perf_counter()
    logits, stream = decode(logits, stream, n)
    best = min(best, (time.perf_counter() - start) / n)
  return dict(context=context, feed_seconds=feed_seconds, seconds_per_token=best,
              peak_rss_bytes=peak_rss_bytes())


def run_child(kind: str, n: int) -> dict:
  proc = subprocess.run([sys.executable, "-m", "bench.stream", kind, str(n)], capture_output=True,
                        text=True, check=False)
  if proc.returncode:
    raise RuntimeError(f"bench.stream {kind} {n} failed:\n{proc.stderr[-3000:]}")
  return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv):
  if len(argv) == 3:  # A child: one measurement in a fresh process, JSON on stdout.
    print(json.dumps({"eval": child_eval, "generate": child_generate}[argv[1]](int(argv[2]))))
    return
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]} (the benchmark takes none)")
  short, long = run_child("eval", SHORT_EVAL), run_child("eval", LONG_EVAL)
  near, far = run_child("generate", SHORT_CONTEXT), run_child("generate", LONG_CONTEXT)
  memory_ratio = long["peak_rss_bytes"] / short["peak_rss_bytes"]
  time_ratio = far["seconds_per_token"] / near["seconds_per_token"]
  result = dict(
      model="tiny preset (d_model 64, 2 layers, segment 64), random weights, batch 1",
      eval_chunk_tokens=CHUNK, eval_32k=short, eval_1m=long, generate_1k=near, generate_1m=far,
      eval_peak_rss_ratio_1m_over_32k=memory_ratio, eval_peak_rss_target=1.1,
      time_per_token_ratio_1m_over_1k=time_ratio, time_per_token_target=1.2)
  mib = 2**20
  print(f"streaming eval peak RSS: 32K {short['peak_rss_bytes'] / mib:.0f} MiB, "
        f"1M {long['peak_rss_bytes'] / mib:.0f} MiB -> ratio {memory_ratio:.3f} (target <= 1.1); "
        f"XLA chunk step {long['xla_chunk_step_bytes'] / mib:.1f} MiB at both lengths; "
        f"1M tokens in {long['seconds']:.1f} s")
  print(f"time per generated token: at 1K {near['seconds_per_token'] * 1e3:.3f} ms, at 1M "
        f"{far['seconds_per_token'] * 1e3:.3f} ms -> ratio {time_ratio:.3f} (target <= 1.2); "
        f"1M-token context fed in {far['feed_seconds']:.1f} s")
  print("wrote", common.write("stream", result))
  plot(result, common.out_path("stream.png"))


def plot(result: dict, path: str) -> None:
  """Peak memory of streaming evaluation, and time per generated token, against the context."""
  plt = common.pyplot()
  fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4))
  evals = [result["eval_32k"], result["eval_1m"]]
  left.plot([e["tokens"] for e in evals], [e["peak_rss_bytes"] / 2**20 for e in evals], "o-",
            color="tab:blue")
  left.set_ylim(0, 1.5 * max(e["peak_rss_bytes"] for e in evals) / 2**20)
  left.set_title(f"streaming eval: peak RSS, 1M/32K = "
                 f"{result['eval_peak_rss_ratio_1m_over_32k']:.2f}", fontsize=9)
  left.set_ylabel("peak resident memory (MiB)")
  left.set_xlabel("document length (tokens)")
  gens = [result["generate_1k"], result["generate_1m"]]
  right.plot([g["context"] for g in gens], [g["seconds_per_token"] * 1e3 for g in gens], "o-",
             color="tab:orange")
  right.set_ylim(0, 1.5 * max(g["seconds_per_token"] for g in gens) * 1e3)
  right.set_title(f"generation: time per token, 1M/1K = "
                  f"{result['time_per_token_ratio_1m_over_1k']:.2f}", fontsize=9)
  right.set_ylabel("ms per generated token")
  right.set_xlabel("context before generating (tokens)")
  for ax in (left, right):
    ax.set_xscale("log", base=2)
    ax.grid(True, which="both", alpha=0.3)
  fig.suptitle("tiny preset, batch 1: flat is the target", fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=120)


if __name__ == "__main__":
  app.run(main)
