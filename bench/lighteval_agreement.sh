#!/usr/bin/env bash
# Full per-question agreement of lighteval_mmlu / lighteval_mcf with lighteval 0.13 on both
# embedded models (figures in docs/benchmarks.md, section "lighteval"):
#   1. every test question's prompt (14,042 x {mmlu, mcf} x {0, 5} shots), no model;
#   2. per model: 4 subjects x 25 questions 0-shot and x 5 questions 5-shot, both tasks, run by
#      lighteval (its venv) and by our pipeline (project venv), compared question by question.
# Usage: bench/lighteval_agreement.sh [OUT_DIR]   (default /tmp/lighteval_agreement)
# Needs bench/setup_lighteval.sh's venv and the converted models in data/models/.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-/tmp/lighteval_agreement}
LE=${LIGHTEVAL_VENV:-$HOME/.cache/mmlu-flavors/venvs/lighteval}/bin/python
PY=${PYTHON:-.venv/bin/python}
MMLU=${MMLU_DIR:-resources/mmlu}
export PYTHONPATH=$PWD/workflow
mkdir -p "$OUT"
bash bench/setup_lighteval.sh
ALL=$(ls "$MMLU/test" | sed 's/_test.csv//')
S4="abstract_algebra college_mathematics college_physics us_foreign_policy"
for t in mmlu mcf; do for k in 0 5; do
  "$LE" bench/lighteval_local.py x "$MMLU" $ALL --task $t --num-fewshot $k --prompts-only \
    --out "$OUT/prompts_${t}_${k}.jsonl"
done; done
"$PY" bench/compare_lighteval_prompts.py --mmlu "$MMLU" "$OUT"/prompts_*_*.jsonl
for m in smollm2-135m-instruct gemma-3-270m; do
  for t in mmlu mcf; do
    "$LE" bench/lighteval_local.py "data/models/$m" "$MMLU" $S4 --task $t --num-fewshot 0 \
      --limit 25 --out "$OUT/ref_${m}_${t}_0.jsonl"
    "$LE" bench/lighteval_local.py "data/models/$m" "$MMLU" $S4 --task $t --num-fewshot 5 \
      --limit 5 --out "$OUT/ref_${m}_${t}_5.jsonl"
  done
  "$PY" bench/compare_lighteval.py "data/models/$m" --mmlu "$MMLU" "$OUT"/ref_${m}_*.jsonl \
    --out "$OUT/disagree_${m}.csv"
done
