#!/usr/bin/env bash
# Create (or refresh) a separate virtualenv for inspect_evals, the reference package of the
# inspect_mmlu flavor (its inspect_ai pins float; kept apart from the project's venv), default
# $HOME/.cache/mmlu-flavors/venvs/inspect (override with INSPECT_VENV).
#   * CPU torch first, pinned (an unpinned torch pulls several GB of CUDA wheels);
#   * inspect-evals 0.26.0 and inspect_ai 0.3.285 with transformers 5.24.0 (the project's),
#     accelerate (the hf provider loads with device_map), polars/pyarrow for the local data.
# Idempotent: a second run with unchanged inputs returns in about a second.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${INSPECT_VENV:-$HOME/.cache/mmlu-flavors/venvs/inspect}
stamp="$VENV/.mmlu-flavors-inspect"
want=$(sha256sum bench/setup_inspect.sh | cut -d' ' -f1)

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && "$VENV/bin/python" -c "import inspect_evals.mmlu" 2>/dev/null; then
  exit 0
fi

mkdir -p "$(dirname "$VENV")"
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
pip=("$VENV/bin/python" -m pip install --disable-pip-version-check --progress-bar off -q)
"${pip[@]}" --upgrade pip
"${pip[@]}" "torch==2.13.0"
"${pip[@]}" "inspect-evals==0.26.0" "inspect_ai==0.3.285" "transformers==5.24.0" accelerate \
  datasets polars pyarrow
"$VENV/bin/python" -c "import inspect_evals.mmlu.mmlu"
echo "$want" > "$stamp"
echo "inspect_evals 0.26.0 ready in $VENV"
