#!/usr/bin/env bash
# One script for a GPU machine (~10 minutes at most): V-JEPA ViT-L/16 bf16 steps eager / compiled,
# with and without activation checkpointing, and FSDP2 on one GPU. Writes results to ${OUT:-.}.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-.}/gpu_check.jsonl"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
python3 -c "import torch, lightning; print('torch', torch.__version__, 'lightning', lightning.__version__)"
python3 bench/gpu_check.py --out "$out" "$@" 2>&1 | tee "${OUT:-.}/gpu_check.log"
