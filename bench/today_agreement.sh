#!/usr/bin/env bash
# Per-question agreement of helm_current and lighteval_current with the real packages, run
# offline in their own venvs on both embedded models (figures in docs/benchmarks.md, section
# "Today's tools"): 4 subjects x 25 test questions (100) at 0 and at 5 shots per model.
#   crfm-helm 0.5.16 (bench/setup_helm.sh):     bench/helm_current_local.py -> compare_helm_current.py
#   lighteval 0.13 (bench/setup_lighteval.sh):  bench/lighteval_local.py --chat-template auto
#                                               -> compare_lighteval.py --flavor lighteval_current
#   inspect_evals 0.26 (bench/setup_inspect.sh): bench/inspect_local.py -> compare_inspect.py
# Usage: bench/today_agreement.sh [OUT_DIR] [helm|lighteval|inspect|all]   (default /tmp/today_agreement all)
# Needs the converted models in data/models/ (snakemake data/models/<model>).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-/tmp/today_agreement}
WHICH=${2:-all}
HELM=${HELM_VENV:-$HOME/.cache/mmlu-flavors/venvs/helm}/bin/python
LE=${LIGHTEVAL_VENV:-$HOME/.cache/mmlu-flavors/venvs/lighteval}/bin/python
INSPECT=${INSPECT_VENV:-$HOME/.cache/mmlu-flavors/venvs/inspect}/bin/python
PY=${PYTHON:-.venv/bin/python}
MMLU=${MMLU_DIR:-resources/mmlu}
LIMIT=${LIMIT:-25}
export PYTHONPATH=$PWD/workflow
mkdir -p "$OUT"
S4="abstract_algebra college_mathematics college_physics us_foreign_policy"
for m in smollm2-135m-instruct gemma-3-270m; do
  if [ "$WHICH" = all ] || [ "$WHICH" = helm ]; then
    bash bench/setup_helm.sh
    # both shot counts in one process (one model load); the comparison splits them
    "$HELM" bench/helm_current_local.py "data/models/$m" "$MMLU" $S4 --num-fewshot 0 5 \
      --limit "$LIMIT" --out "$OUT/helm_${m}_05.jsonl"
    "$PY" bench/compare_helm_current.py "data/models/$m" --mmlu "$MMLU" \
      "$OUT/helm_${m}_05.jsonl" --out "$OUT/helm_disagree_${m}.csv"
  fi
  if [ "$WHICH" = all ] || [ "$WHICH" = inspect ]; then
    bash bench/setup_inspect.sh
    "$INSPECT" bench/inspect_local.py "data/models/$m" "$MMLU" $S4 --num-fewshot 0 5 \
      --limit "$LIMIT" --out "$OUT/inspect_${m}_05.jsonl"
    "$PY" bench/compare_inspect.py "data/models/$m" --mmlu "$MMLU" \
      "$OUT/inspect_${m}_05.jsonl" --out "$OUT/inspect_disagree_${m}.csv"
  fi
  if [ "$WHICH" = all ] || [ "$WHICH" = lighteval ]; then
    bash bench/setup_lighteval.sh
    for k in 0 5; do
      "$LE" bench/lighteval_local.py "data/models/$m" "$MMLU" $S4 --task mmlu --num-fewshot $k \
        --limit "$LIMIT" --chat-template auto --out "$OUT/le_${m}_${k}.jsonl"
    done
    "$PY" bench/compare_lighteval.py "data/models/$m" --flavor lighteval_current --mmlu "$MMLU" \
      "$OUT"/le_${m}_0.jsonl "$OUT"/le_${m}_5.jsonl --out "$OUT/le_disagree_${m}.csv"
  fi
done
