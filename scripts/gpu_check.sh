#!/usr/bin/env bash
# The CUDA paths on the bundled model in bf16, for a lent GPU (one command, < 8 min):
#   device run: bash scripts/gpu_check.sh   (carry .whl, filled here by scripts/gpu_wheels.sh)
# collect end to end vs a plain forward, the prefix-shared simulator vs naive and vs a plain forward,
# three LoRA SFT steps and three simulator-training steps through the recipes' entry points; then the
# vLLM path (tests/test_vllm.py: engine, served, parity, LoRA; the vLLM benchmark in bf16) where vllm
# imports (its CUDA wheel is far over the 64 MiB a device call may carry, so the image must have it).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 WANDB_MODE=offline TOKENIZERS_PARALLELISM=false
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
fi
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
step() { echo "== $1"; shift; timeout "${STEP_TIMEOUT:-150}" "$@" 2>&1 | grep -v -E "Warning|warn\(|Loading weights" | tail -12; }
step "collect (bf16, cuda)" python3 benchmarks/collect.py --device cuda --dtype bfloat16 --windows 2048 --batch-size 64
step "simulator (bf16, cuda)" python3 benchmarks/simulate.py --device cuda --dtype bfloat16 --exemplars 64
step "LoRA SFT, 3 steps (bf16, cuda)" python3 -m neuroscribe.train.sft --config recipes/tiny/sft.yaml \
  --use_cpu false --bf16 true --dtype bfloat16 --max_steps 3 --dataset_name benchmarks/data/distill \
  --output_dir "$OUT/sft" --logging_steps 1
step "simulator training, 3 steps (bf16, cuda)" python3 -m neuroscribe.train.simulator \
  --config recipes/tiny/simulator.yaml --use_cpu false --bf16 true --dtype bfloat16 --max_steps 3 \
  --dataset_name benchmarks/data/simulator --output_dir "$OUT/simulator" --logging_steps 1
if python3 -c "import vllm" >/dev/null 2>&1; then
  STEP_TIMEOUT=300 step "vLLM tests (engine, served, parity, LoRA)" python3 -m pytest -q -p no:cacheprovider tests/test_vllm.py
  step "vLLM simulator + generation benchmark (bf16, cuda)" python3 benchmarks/vllm_simulate.py --dtype bfloat16 \
    --exemplars 64 --repeats 1
else
  echo "== vLLM: skipped (vllm does not import on this machine)"
fi
echo "== done"
