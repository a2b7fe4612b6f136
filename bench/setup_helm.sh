#!/usr/bin/env bash
# Create (or refresh) a separate virtualenv with crfm-helm 0.5.16's code, to check that its MMLU
# prompt builder still gives our `helm` flavor's prompts (bench/helm_local.py) and that its
# Hugging Face client feeds a local model what `helm_current` feeds it (bench/helm_current_local.py).
# Default $HOME/.cache/mmlu-flavors/venvs/helm (override with HELM_VENV).
#
# Only the MMLU path is installed: crfm-helm itself WITHOUT its dependencies (its full set pins
# datasets~=3.1, spacy, torchvision... and pulls CUDA wheels), plus the few packages that
# helm.benchmark.scenarios.mmlu_scenario, helm.benchmark.adaptation.adapters.* and
# helm.clients.huggingface_client import (CPU torch, pinned, first).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${HELM_VENV:-$HOME/.cache/mmlu-flavors/venvs/helm}
HELM_VERSION=0.5.16
stamp="$VENV/.mmlu-flavors-helm"
want=$(sha256sum bench/setup_helm.sh | cut -d' ' -f1)

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && "$VENV/bin/python" -c "import helm" 2>/dev/null; then
  exit 0
fi

mkdir -p "$(dirname "$VENV")"
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
pip=("$VENV/bin/python" -m pip install --disable-pip-version-check --progress-bar off -q)
"${pip[@]}" --upgrade pip
"${pip[@]}" "torch==2.13.0"
"${pip[@]}" --no-deps "crfm-helm==$HELM_VERSION"
"${pip[@]}" "cattrs~=22.2" "colorlog~=6.9" "dacite~=1.6" "pyhocon~=0.3.59" "ubelt~=1.3" \
  "retrying~=1.3" "tqdm~=4.64" "sqlitedict>=2.1.0,<3.0" "zstandard" "numpy" "pyyaml" "Mako~=1.2" \
  "polars" "pyarrow" "filelock" "requests" "transformers==5.24.0" "tokenizers"
"$VENV/bin/python" -c "
from helm.benchmark.scenarios.mmlu_scenario import MMLUScenario
from helm.benchmark.adaptation.adapters.multiple_choice_joint_adapter import MultipleChoiceJointAdapter
from helm.benchmark.run_specs.lite_run_specs import get_mmlu_spec
from helm.benchmark.huggingface_registration import register_huggingface_local_model_from_flag_value
from helm.clients.huggingface_client import HuggingFaceClient
"
echo "$want" > "$stamp"
echo "crfm-helm $HELM_VERSION (prompt path only) ready in $VENV"
