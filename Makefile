# Every target bootstraps .venv from the pinned requirements files, so `make train` and `make test`
# work on a fresh machine that has only Python 3.11. Each requirements file installs once (a stamp
# in .venv), and again when it changes: `make train` needs requirements.txt alone; `make test` adds
# requirements-tpu.txt (libtpu, for the TPU compile tests) and requirements-test.txt (pytest, and
# torch with transformers for the converter's parity test).
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
WORKDIR ?= runs/demo
AOT_DIR ?= runs/aot
SEEDS ?= 0 1 2

.PHONY: help train test bench devices aot results-passkey results-lm results-books clean

# `make help`: every target with its line, read from the `## ` comments below.
help:  ## this list
	@awk 'BEGIN {FS = ":.*## "} /^[a-z-]+:.*## / {printf "  %-16s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(PY):
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; install Python 3.11 or run 'make PYTHON=/path/to/python3.11 ...'"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

$(VENV)/.installed: requirements.txt | $(PY)
	$(PIP) install --quiet -r requirements.txt
	touch $@

$(VENV)/.installed-tpu: requirements-tpu.txt $(VENV)/.installed
	$(PIP) install --quiet -r requirements-tpu.txt
	touch $@

$(VENV)/.installed-test: requirements-test.txt $(VENV)/.installed-tpu
	$(PIP) install --quiet -r requirements-test.txt
	touch $@

train: $(VENV)/.installed  ## train and evaluate the demo model on the Python stdlib (6-9 min on 2 cores)
	$(PY) train.py --config=configs/demo.py --workdir=$(WORKDIR)

# One worker per core (pytest-xdist), each file on one worker so that its module fixtures are
# built once: most tests are single-threaded XLA compiles, so two cores take about half the time.
test: $(VENV)/.installed-test  ## the test suite on the CPU (about 10 min on 2 cores)
	$(PY) -m pytest -q -n auto --dist loadfile tests

# What JAX sees here: platform, device kinds and counts.
devices: $(VENV)/.installed  ## what JAX sees here: platform, device kinds and counts
	$(PY) -m infini_jax.devices

# Compiles every paper recipe for its TPU slice (the list is infini_jax/aot.py's RECIPES; several
# minutes each) and writes the README's table between its aot markers from the JSON reports.
aot: $(VENV)/.installed-tpu  ## compile the paper recipes for their TPU slices, fill the README table
	@mkdir -p $(AOT_DIR)
	$(PY) -m infini_jax.aot --recipes | while read -r config topology; do \
	  $(PY) -m infini_jax.aot --config=$$config --topology=$$topology --out=$(AOT_DIR) || true; \
	done
	$(PY) -m infini_jax.aot --table=$(AOT_DIR) --readme=README.md

# Under 30 minutes on 2 idle cores (30 with the studies now in bench/studies/, which it skips).
bench: $(VENV)/.installed  ## the benchmarks in bench/ (JSON and plots in bench/out)
	$(PY) -m bench.run_all

# docs/RESULTS.md's experiments. Each run resumes where it stopped and a finished one is
# skipped. RUNS="a b" restricts a target to those runs:
#   results-passkey: run names of experiments/passkey.sh (gated_512, jit127_gatelr1_seed2_4k, xl,
#     ...; a 4K stage starts from its 512-token stage's checkpoint: name both);
#   results-lm: run names of experiments/python_lm.py ("xl infini_linear_decay_xl_cache"; its
#     --list prints them), for SEEDS (default "0 1 2").
# results-passkey trains 34 runs, 750M tokens: 28 are stages of 23-25M tokens (1,500 steps at
# 512 tokens or 700 at 4K; a 512 stage and a 4K stage take 53 CPU-minutes together), the other
# six 8-25M tokens: about 14 CPU-hours. Then 19 sweeps and 5 mid-segment sweeps; a sweep to 1M
# takes about 5 CPU-minutes per placement of the answer. About 18 CPU-hours in all (summed from
# the timings in docs/RESULTS.md). results-lm: 87 runs (29 memories x 3 seeds),
# 9 CPU-minutes per Infini run, 17 per XL run, 50 per full-attention run: about 20 CPU-hours.
results-passkey: $(VENV)/.installed  ## passkey retrieval, every run of RESULTS section 1 (about 18 CPU-hours; RUNS=...)
	PYTHON=$(PY) ONLY="$(RUNS)" bash experiments/passkey.sh

results-lm: $(VENV)/.installed  ## Python LM, every run of RESULTS section 2 (about 20 CPU-hours; RUNS=..., SEEDS=...)
	$(PY) -m experiments.python_lm --runs_dir=runs/python_lm --steps=1500 --seeds="$(SEEDS)" \
	    --runs="$(RUNS)"

# 7 models x 3 seeds of the book LM (150 steps each, 4-20 CPU-minutes a run), then per seed the
# book-filler passkey: Infini's two stages (about an hour), XL and local (half an hour each) and
# the sweeps to 1M. About 9 hours on a 2-core machine.
results-books: $(VENV)/.installed  ## book LM by context position and passkey among book text (docs/RESULTS.md section 4; about 9 hours)
	PYTHON=$(PY) bash experiments/books.sh all runs/books

clean:  ## remove .venv and runs/
	rm -rf $(VENV) runs
