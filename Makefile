# Every target bootstraps .venv from the pinned requirements.txt, so `make train` and `make test`
# work on a fresh machine that has only Python 3.11.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
WORKDIR ?= runs/demo

.PHONY: train test bench results-passkey results-lm clean

$(VENV)/.installed: requirements.txt
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; install Python 3.11 or run 'make PYTHON=/path/to/python3.11 ...'"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -r requirements.txt
	touch $@

train: $(VENV)/.installed
	$(PY) train.py --config=configs/demo.py --workdir=$(WORKDIR)

# One worker per core (pytest-xdist), each file on one worker so that its module fixtures are
# built once: most tests are single-threaded XLA compiles, so two cores take about half the time.
test: $(VENV)/.installed
	$(PY) -m pytest -q -n auto --dist loadfile tests

bench: $(VENV)/.installed
	$(PY) -m bench.run_all

# docs/RESULTS.md's experiments: each resumes where it stopped (about 2 CPU-hours each).
results-passkey: $(VENV)/.installed
	PYTHON=$(PY) bash experiments/passkey.sh

results-lm: $(VENV)/.installed
	PYTHON=$(PY) bash experiments/python_lm.sh

clean:
	rm -rf $(VENV) runs
