#!/usr/bin/env bash
# The GPU check (docs/speed.md, "The GPU check"): a thin wrapper over `python -m tooling.gpu_check`.
#   bash tooling/gpu_check.sh OUT --device cuda          # on a CUDA machine, <= 8 minutes by its time boxes
#   bash tooling/gpu_check.sh OUT --device cpu --quick   # tiny sizes on CPU (CI)
# Writes OUT/gpu_check.json and OUT/gpu_check.log; exits 1 if a step failed or ran past its box.
set -euo pipefail
if [ $# -lt 1 ] || [ "${1#-}" != "$1" ]; then
    echo "usage: bash tooling/gpu_check.sh OUT [--device cpu|cuda] [--quick] [--only STEP ...] [--box STEP=S]" >&2
    exit 2
fi
cd "$(dirname "${BASH_SOURCE[0]}")/.."
exec "${PYTHON:-python}" -m tooling.gpu_check "$@"
