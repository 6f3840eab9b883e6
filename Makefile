# gracecodec developer entry points. `make demo` and `make test` set everything up
# (a virtual environment in .venv with the CPU build of every dependency) on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
OUT ?= out

.PHONY: help setup demo test test-fast lint bench-motion csim clean proto

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "torch==2.13.0"  # the CPU build first (never an unpinned torch)
	$(BIN)/pip install -q -e ".[dev,learned]"
	$(BIN)/pip install -q --no-deps "facenet-pytorch==2.6.0"  # MTCNN weights (AKD-MT); its old torch pin is not ours
	touch $(STAMP)

setup: $(STAMP)  ## create .venv and install gracecodec with its test tools

demo: setup  ## make the example clip, encode it, show the stream, decode it
	@mkdir -p $(OUT)
	$(BIN)/gracecodec example $(OUT)/example.mp4
	$(BIN)/gracecodec encode $(OUT)/example.mp4 $(OUT)/example.agc
	$(BIN)/gracecodec info $(OUT)/example.agc
	$(BIN)/gracecodec decode $(OUT)/example.agc $(OUT)/example_decoded.mp4

test: setup csim  ## run the whole test suite (pytest and the C-simulation testbenches)
	$(BIN)/python -m pytest -q

test-fast: setup  ## the tests without the slow ones
	$(BIN)/python -m pytest -q -m "not slow"

lint: setup  ## ruff lint and format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench-motion: setup  ## motion rate and landmark error on the val clips of ../shared/data
	$(BIN)/gracecodec bench-motion --split val

proto: setup  ## regenerate the gRPC stubs in transport/ from transport/gracecall.proto
	PYTHON=$(BIN)/python sh transport/regenerate.sh

csim:  ## build and run the HLS engine testbenches with g++ (C simulation; no Vitis needed)
	$(MAKE) -C hw csim

clean:  ## remove build products and caches (keeps .venv)
	rm -rf $(OUT) build *.egg-info .pytest_cache .ruff_cache
