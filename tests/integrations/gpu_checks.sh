#!/usr/bin/env bash
# The integration checks that need GPUs (2 or more): run from the repository root on a machine
# with CUDA, torch, transformers, accelerate and deepspeed installed. Each prints its measured
# difference and fails above its tolerance. The CPU test suite covers the rest.
set -euo pipefail
HERE=tests/integrations
OUT=${1:-$(mktemp -d)}
echo "gpu_checks: results in $OUT"

# 1. RDropTrainer with the fused head under FSDP2, 2 processes, against one process.
python "$HERE/hf_trainer_fsdp2_gpu_check.py" "$OUT/fsdp" ref
accelerate launch --use_fsdp --fsdp_version 2 --num_processes 2 \
    "$HERE/hf_trainer_fsdp2_gpu_check.py" "$OUT/fsdp" fsdp2
python "$HERE/hf_trainer_fsdp2_gpu_check.py" "$OUT/fsdp" compare

# 2. DeepSpeed ZeRO-2 with gradients partitioned over 2 processes, against one plain process.
python "$HERE/deepspeed_check.py" "$OUT/ds" 0
torchrun --standalone --nproc_per_node 2 "$HERE/deepspeed_check.py" "$OUT/ds" 2
python - "$OUT/ds" <<'PY'
import json, sys
out = sys.argv[1]
ref = json.load(open(f"{out}/stage0_rank0.json"))
for rank in (0, 1):
    got = json.load(open(f"{out}/stage2_rank{rank}.json"))
    diff = max(max(abs(a - b) for a, b in zip(got["grad"][n], g)) for n, g in ref["grad"].items())
    print(f"ZeRO-2 rank {rank}: max gradient difference {diff:.2e}, loss {got['loss']:.6f} "
          f"vs {ref['loss']:.6f}")
    assert diff <= 1e-5, diff
PY
