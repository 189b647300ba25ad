#!/usr/bin/env bash
# One script for a GPU machine. Parts, in order of what they are worth (each one command; name some
# to run only those, e.g. `bash bench/gpu_check.sh modes`):
#   modes        V-JEPA and AR video at ViT-L/16, 16 x 224^2, batch 24, bf16: eager / compiled, with
#                and without activation checkpointing, FSDP2 on one GPU; 20 steps after 6, as the
#                H100 runs in docs/performance.md (~6 min on an H100)
#   profile      the per-region table of both steps at the same shapes, compiled, bf16 (~2 min)
#   max_batch    the largest batch that trains in eager mode: V-JEPA at ViT-L and ViT-H, AR video at
#                ViT-L, with and without activation checkpointing (~4 min)
#   large_batch  compile + checkpointing with and without FSDP2 at batch ${LARGE_BATCH:-96}, where the
#                GPU's work per step outgrows the host's (bench/host_overhead.py) (~4 min)
# Results (JSON lines, logs) go to ${OUT:-.}; each part has a time limit so one stuck part cannot
# take the others' time. The exit status is the first failing part's.
set -uo pipefail
cd "$(dirname "$0")/.."
dir="${OUT:-.}"
out="$dir/gpu_check.jsonl"
parts=("$@")
[ ${#parts[@]} -eq 0 ] && parts=(modes profile max_batch large_batch)
for part in "${parts[@]}"; do  # every name checked before any GPU time is spent
  case "$part" in modes|profile|max_batch|large_batch) ;; *) echo "unknown part $part (modes, profile, max_batch, large_batch)" >&2; exit 2 ;; esac
done
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
{
  rc=0
  failed() { local status=$?; [ "$rc" -ne 0 ] || rc=$status; }  # keep the first failing part's status
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  python3 -c "import torch, lightning; print('torch', torch.__version__, 'lightning', lightning.__version__)"
  for part in "${parts[@]}"; do
    echo "== $part $(date +%T)"
    case "$part" in
      modes) timeout 480 python3 bench/gpu_check.py --out "$out" --objectives vjepa ar_video --steps 20 --warmup 6 \
               || failed ;;
      profile) timeout 180 python3 bench/profile_step.py --device cuda --bf16 --compile --preset large --warmup 6 \
                 --steps 4 --trace "$dir/traces" || failed ;;
      max_batch) timeout 150 python3 bench/gpu_check.py --out "$out" --only "" --objectives vjepa \
                   --max-batch large,huge || failed
                 timeout 120 python3 bench/gpu_check.py --out "$out" --only "" --objectives ar_video \
                   --max-batch large || failed ;;
      large_batch) timeout 300 python3 bench/gpu_check.py --out "$out" --objectives vjepa ar_video \
                     --only compile_ac,fsdp2_compile_ac --batch "${LARGE_BATCH:-96}" || failed ;;
    esac
  done
  exit "$rc"
} 2>&1 | tee -a "$dir/gpu_check.log"
