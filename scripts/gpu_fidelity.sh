#!/usr/bin/env bash
# The stress suite's key cells on a CUDA machine, one part at a time (each under 10 minutes):
#   bash scripts/gpu_fidelity.sh probe|f1-minirl|f1-noIS|f4-clip|f4-noclip|f9-mu|f9-dppo
# What each part runs, the model (KEEL_GPU_MOE, a local MoE directory, else tiny-moe-deep: the
# plumbing only) and what was cut: scripts/gpu_fidelity.py. Records go to $OUT/<part>.json
# (default ./gpu_fidelity), written after every step, so a part cut by its timeout keeps its steps.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
PART=${1:?name a part: probe f1-minirl f1-noIS f4-clip f4-noclip f9-mu f9-dppo}
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
export PYTHONPATH="$PWD/client:$PWD/server:$PWD/worker${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || exit 1
"$PY" -c "import vllm" 2>/dev/null || { echo "vLLM does not import: this part needs it"; exit 2; }
# 540 s for the part itself: with the interpreter's and vLLM's start it stays under 10 minutes.
timeout 540 "$PY" scripts/gpu_fidelity.py "$PART" --out "${OUT:-gpu_fidelity}"
