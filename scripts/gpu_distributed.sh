#!/usr/bin/env bash
# One job on k GPUs of one node (NCCL + FSDP2), then with vLLM sampling on rank 0; each part under
# 10 minutes. Run from the repository root on a CUDA machine with ≥ 2 GPUs:
#   bash scripts/gpu_distributed.sh        (results: gpu_distributed_*.json under $OUT or .)
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || exit 1
timeout 560 "$PY" scripts/gpu_distributed.py fsdp
if "$PY" -c "import vllm" 2>/dev/null; then timeout 560 "$PY" scripts/gpu_distributed.py vllm
else echo "vllm not importable: the vllm part is skipped"; fi
