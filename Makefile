PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_PIN := torch==2.13.0
DATA_DIR := /usr/share/datasets/fashion-mnist

.PHONY: setup data train test lint bench mutate clean

$(BIN)/sbnkit: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check $(TORCH_PIN)
	$(BIN)/pip install -q --disable-pip-version-check -e '.[dev]'
	touch $@

setup: $(BIN)/sbnkit

data:
	@if [ -f $(DATA_DIR)/train-images-idx3-ubyte.gz ] || [ -n "$$SBNKIT_DATA" ]; then :; \
	elif [ "$$(id -u)" = 0 ]; then \
		(apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 || \
		 (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq dataset-fashion-mnist >/dev/null)) \
		|| echo "could not install dataset-fashion-mnist; set SBNKIT_DATA to a folder with the IDX files"; \
	else echo "not root: install dataset-fashion-mnist or set SBNKIT_DATA"; fi

train: setup data
	$(BIN)/sbnkit train configs/fmnist_default.toml --out runs/fmnist_default --overwrite

test: setup
	$(BIN)/ruff check sbnkit tests benchmarks experiments tools
	$(BIN)/ruff format --check sbnkit tests benchmarks experiments tools
	$(BIN)/python -m pytest

# Mutation testing over the chosen modules (tools/mutate.py; scores are recorded in TESTING.md).
MUTANTS ?= 40
mutate: setup
	OMP_NUM_THREADS=1 $(BIN)/python tools/mutate.py --max-mutants $(MUTANTS) --report runs/mutation-report.md

lint: setup
	$(BIN)/ruff check --fix sbnkit tests benchmarks experiments tools
	$(BIN)/ruff format sbnkit tests benchmarks experiments tools

clean:
	rm -rf $(VENV) runs .pytest_cache
