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

.PHONY: train test bench devices aot results-passkey results-lm results-books clean

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

train: $(VENV)/.installed
	$(PY) train.py --config=configs/demo.py --workdir=$(WORKDIR)

# One worker per core (pytest-xdist), each file on one worker so that its module fixtures are
# built once: most tests are single-threaded XLA compiles, so two cores take about half the time.
test: $(VENV)/.installed-test
	$(PY) -m pytest -q -n auto --dist loadfile tests

# What JAX sees here: platform, device kinds and counts.
devices: $(VENV)/.installed
	$(PY) -m infini_jax.devices

# Compiles every paper recipe for its TPU slice (the list is infini_jax/aot.py's RECIPES; several
# minutes each) and writes the README's table between its aot markers from the JSON reports.
aot: $(VENV)/.installed-tpu
	@mkdir -p $(AOT_DIR)
	$(PY) -m infini_jax.aot --recipes | while read -r config topology; do \
	  $(PY) -m infini_jax.aot --config=$$config --topology=$$topology --out=$(AOT_DIR) || true; \
	done
	$(PY) -m infini_jax.aot --table=$(AOT_DIR) --readme=README.md

bench: $(VENV)/.installed
	$(PY) -m bench.run_all

# docs/RESULTS.md's experiments: each resumes where it stopped (about 2 CPU-hours each).
results-passkey: $(VENV)/.installed
	PYTHON=$(PY) bash experiments/passkey.sh

results-lm: $(VENV)/.installed
	PYTHON=$(PY) bash experiments/python_lm.sh

# docs/RESULTS_books.md: book LM by context position and passkey among book text (configs/books_*.py).
results-books: $(VENV)/.installed
	PYTHON=$(PY) bash experiments/books.sh all runs/books

clean:
	rm -rf $(VENV) runs
