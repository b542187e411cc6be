# Every README command is a target here. `make run` and `make test` work on a fresh machine with only
# Python 3.11 and pip: they create .venv/ and install the project into it first.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# Python 3.11 installs the exact versions in constraints.txt (the ones the suite and the results ran with);
# another Python gets pip's newest that pyproject.toml allows.
PINS    = $$($(PY) -c 'import sys; print("-c constraints.txt" if sys.version_info[:2] == (3, 11) else "")')
WORKDIR ?= runs/char_quick
# Real data: ../shared/data when it is there (override with LSTM_JAX_DATA=/path/to/data).
export LSTM_JAX_DATA ?= $(wildcard $(abspath ../shared/data))

IMDB_BEST ?= runs/imdb_best
MACBETH ?= runs/macbeth
IMDB := $(PY) -m experiments.imdb_sentiment.main
IMDB_BEST_RUN := $(IMDB) --config=experiments/imdb_sentiment/configs/imdb_best.py

.PHONY: run test lint format bench imdb-best macbeth strip-notebooks venv clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]' $(PINS)
	@# The native CPU kernel, built once per machine here rather than inside the first run or test (minutes
	@# the first time ziglang is used); a failed build is not an error: impl="auto" then uses the XLA impls.
	$(PY) -c "from lstm_jax import native; print('native CPU kernel:', native.unavailable_reason() or 'built')"
	touch $(STAMP)

venv: $(STAMP)

## The main job: train a short char-level model and print generated text.
run: $(STAMP)
	$(PY) -m experiments.char_textgen.main --config=experiments/char_textgen/configs/quick.py --workdir=$(WORKDIR)

## The whole test suite (fast; real-data tests run when LSTM_JAX_DATA points at the data).
test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile --durations=25

## Training-step speed against Flax, Keras 3 (JAX, TensorFlow) and PyTorch (installs the `bench` extra).
bench: $(STAMP)
	$(PY) -m pip install --quiet -e '.[dev,bench]' $(PINS)
	$(PY) -m benchmarks.run

## The IMDB best recipe: seeds 0 and 1 side by side, each on half the cores (logs in their workdirs), then
## seed 2 on all of them, then the ensemble of the three in $(IMDB_BEST)_ens. One core: one after another.
imdb-best: $(STAMP)
	mkdir -p $(IMDB_BEST)_s0 $(IMDB_BEST)_s1
	if [ "$$(nproc)" -lt 2 ]; then \
	  $(IMDB_BEST_RUN) --workdir=$(IMDB_BEST)_s0 --config.seed=0 && \
	  $(IMDB_BEST_RUN) --workdir=$(IMDB_BEST)_s1 --config.seed=1; \
	else \
	  $(IMDB_BEST_RUN) --workdir=$(IMDB_BEST)_s0 --config.seed=0 --cpus=1/2 > $(IMDB_BEST)_s0/train.log 2>&1 & p0=$$!; \
	  $(IMDB_BEST_RUN) --workdir=$(IMDB_BEST)_s1 --config.seed=1 --cpus=2/2 > $(IMDB_BEST)_s1/train.log 2>&1 & p1=$$!; \
	  wait $$p0; s0=$$?; wait $$p1; s1=$$?; tail -n 1 $(IMDB_BEST)_s0/train.log $(IMDB_BEST)_s1/train.log; \
	  test $$s0 -eq 0 && test $$s1 -eq 0; \
	fi
	$(IMDB_BEST_RUN) --workdir=$(IMDB_BEST)_s2 --config.seed=2
	$(IMDB) --mode=ensemble --workdir=$(IMDB_BEST)_ens $(IMDB_BEST)_s0 $(IMDB_BEST)_s1 $(IMDB_BEST)_s2

## The Keras char tutorial in full: Macbeth, 200 epochs (about 9.5 h on 2 idle cores). Stopped (Ctrl-C, SIGTERM,
## a lost session), the same command resumes it from its last checkpoint.
macbeth: $(STAMP)
	$(PY) -m experiments.char_textgen.main --config=experiments/char_textgen/configs/macbeth.py --workdir=$(MACBETH)

## Remove outputs and execution counts from the notebooks before committing them.
strip-notebooks: $(STAMP)
	$(PY) -c "import glob, nbformat; [nbformat.write(nb, p) for p in glob.glob('notebooks/*.ipynb') for nb in [nbformat.read(p, as_version=4)] if [c.update(outputs=[], execution_count=None) for c in nb.cells if c.cell_type == 'code'] or True]"

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
