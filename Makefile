PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_PIN := torch==2.13.0
DATA_DIR := /usr/share/datasets/fashion-mnist

.PHONY: setup data train test lint bench clean

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
	$(BIN)/ruff check sbnkit tests benchmarks experiments
	$(BIN)/ruff format --check sbnkit tests benchmarks experiments
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check --fix sbnkit tests benchmarks experiments
	$(BIN)/ruff format sbnkit tests benchmarks experiments

clean:
	rm -rf $(VENV) runs .pytest_cache
