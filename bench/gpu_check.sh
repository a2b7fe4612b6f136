#!/usr/bin/env bash
# GPU check of the engine (bench/gpu_check.py): one NVIDIA GPU, PyTorch + transformers, no
# network, no weights. Writes ${1:-gpu_check.json}; meant to finish in under 8 minutes.
#   bash bench/gpu_check.sh [out.json]
#   bash bench/gpu_check.sh /tmp/cpu.json --device cpu --quick     # CPU smoke test
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="${1:-gpu_check.json}"
shift || true
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || true
PYTHONUNBUFFERED=1 exec python3 "$here/gpu_check.py" --out "$out" "$@"
