#!/usr/bin/env bash
# Create (or refresh) a separate virtualenv for lighteval, the reference package of the
# lighteval_* flavors. Its pins clash with the project's (huggingface_hub<2 among others), so it
# lives OUTSIDE the repo, default $HOME/.cache/mmlu-flavors/venvs/lighteval (override with LIGHTEVAL_VENV).
#
# Recipe that runs offline here:
#   * CPU torch first, pinned (an unpinned torch pulls several GB of CUDA wheels);
#   * lighteval 0.13.0 with transformers 5.24.0 (the project's version), huggingface_hub<2 and
#     xxhash<4;
#   * an EMPTY lighteval/tasks/tasks/tinyBenchmarks.pkl inside the installed package: without
#     it, importing lighteval's task registry tries to download that file from GitHub (which
#     fails offline and aborts the import). The file is only used by the tinyBenchmarks tasks.
# Idempotent: a second run with unchanged inputs returns in about a second.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${LIGHTEVAL_VENV:-$HOME/.cache/mmlu-flavors/venvs/lighteval}
LIGHTEVAL_VERSION=0.13.0
stamp="$VENV/.mmlu-flavors-lighteval"
want=$(sha256sum bench/setup_lighteval.sh | cut -d' ' -f1)

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && "$VENV/bin/python" -c "import lighteval" 2>/dev/null; then
  exit 0
fi

mkdir -p "$(dirname "$VENV")"
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
pip=("$VENV/bin/python" -m pip install --disable-pip-version-check --progress-bar off -q)
"${pip[@]}" --upgrade pip
"${pip[@]}" "torch==2.13.0"
"${pip[@]}" "lighteval==$LIGHTEVAL_VERSION" "transformers==5.24.0" "huggingface_hub<2" "xxhash<4" \
  "polars" "pyarrow"
pkg=$("$VENV/bin/python" -c "import importlib.util,os;print(os.path.dirname(importlib.util.find_spec('lighteval').origin))")
mkdir -p "$pkg/tasks/tasks"
: > "$pkg/tasks/tasks/tinyBenchmarks.pkl"
HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 "$VENV/bin/python" -c "import lighteval.tasks.registry"
echo "$want" > "$stamp"
echo "lighteval $LIGHTEVAL_VERSION ready in $VENV"
