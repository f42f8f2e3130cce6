# The human interface. `make demo` and `make test` each set up .venv first (scripts/setup.sh).
export OMP_NUM_THREADS ?= 1
export TOKENIZERS_PARALLELISM ?= false
PYTEST_ARGS ?=

.PHONY: setup demo test test-fast bench clean

setup:
	@bash scripts/setup.sh

demo: setup
	.venv/bin/neuroscribe demo

test: setup
	@bash scripts/system_deps.sh
	.venv/bin/python -m pytest -q $(PYTEST_ARGS)

test-fast: setup
	.venv/bin/python -m pytest -q -m "not slow" $(PYTEST_ARGS)

bench: setup
	.venv/bin/python benchmarks/collect.py
	.venv/bin/python benchmarks/simulate.py

clean:
	rm -rf runs .pytest_cache
