#!/usr/bin/env bash
# Build the separate venv that holds OpenAI's reference scorer, automated-interpretability==0.0.24
# (module neuron_explainer), used by tests/test_reference_scoring.py. It pins numpy<2, so it can
# never share the main .venv. Idempotent: returns at once when the venv already has the package.
#   NEUROSCRIBE_REF_VENV  where to build it (default: <repo>/.venv-ref)
#   PYTHON                interpreter to build it from (default: python3)
# Full dependencies install in ~20 s from a warm pip cache (numpy 1.26, scikit-learn, scipy,
# tiktoken, blobfile, boostedblob, httpx, orjson); importing the scorer needs most of them.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${NEUROSCRIBE_REF_VENV:-$root/.venv-ref}"
python="${PYTHON:-python3}"
pin="automated-interpretability==0.0.24"
check='import importlib.metadata as m, neuron_explainer.explanations.scoring
assert m.version("automated-interpretability") == "0.0.24"'

ready() { [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "$check" >/dev/null 2>&1; }

if ready; then echo "$venv"; exit 0; fi
exec 9>"${TMPDIR:-/tmp}/neuroscribe-venv-ref.lock"
flock 9  # a second caller waits for the first build instead of racing it
if ready; then echo "$venv"; exit 0; fi
"$python" -m venv "$venv" >&2
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "$pin" >&2
ready || { echo "reference venv $venv: $pin installed but neuron_explainer does not import" >&2; exit 1; }
echo "$venv"
