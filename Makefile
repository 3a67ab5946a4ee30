# README's two commands: `make demo` and `make test`. Both build .venv themselves.
PY ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

export WANDB_MODE ?= offline
export HF_HUB_OFFLINE ?= 1

.PHONY: install demo test test-all bench clean

$(STAMP): pyproject.toml
	@test -n "$(PY)" || { echo "need python3.11 (or python3) on PATH, or: make PY=/path/to/python ..."; exit 1; }
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e '.[dev,text,spatial,ray,ann]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/spagraph run experiments/synthetic_demo.yaml --out runs/demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-all: $(STAMP)
	$(BIN)/python -m pytest -q -m ''

clean:
	rm -rf runs .pytest_cache
