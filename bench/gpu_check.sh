#!/usr/bin/env bash
# The one command for a lent GPU machine (torch + transformers, no venv, no vLLM/Ray/DeepSpeed,
# no network), run from the repository root:  bash bench/gpu_check.sh
# The planner's memory estimates against CUDA peaks (bench/gpu_check.py) on the 7B-wide model
# at 8 decoder/encoder layers, then, while the time budget allows, 16 and the full 32 (the real
# 7B shape: three depths give the per-layer slope). Results: ${OUT:-bench/results}/gpu_check*.json
# and .log. Stays under about 8.5 minutes in all; exit status 0 only if every configuration ran.
set -euo pipefail

cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
PY="${PYTHON:-python3}"
OUT_DIR="${OUT:-bench/results}"
BUDGET=510 # seconds for all configurations together
mkdir -p "$OUT_DIR"

nvidia-smi || echo "nvidia-smi failed (continuing)"
"$PY" -c 'import sys, torch, transformers; print(sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda, "transformers", transformers.__version__, "gpu", torch.cuda.is_available())'

status=0
start=$SECONDS
run() { # run NAME LIMIT ARGS...: one configuration, its output kept beside its JSON
    local name=$1 limit=$2 rc=0
    shift 2
    echo
    echo "=== $name: gpu_check.py $* (limit ${limit} s) ==="
    timeout "$limit" "$PY" bench/gpu_check.py "$@" --out "$OUT_DIR/$name.json" 2>&1 | tee "$OUT_DIR/$name.log" || rc=$?
    echo "=== $name: exit $rc after $((SECONDS - start)) s in all ==="
    if [ "$rc" -ne 0 ]; then status=1; fi
}

run gpu_check "$BUDGET" --layers 8 --audio-layers 8
for layers in 16 32; do
    left=$((BUDGET - (SECONDS - start)))
    if [ "$left" -lt 150 ]; then
        echo "skipping --layers $layers: ${left} s left of the ${BUDGET} s budget"
        continue
    fi
    run "gpu_check_l$layers" "$left" --layers "$layers" --audio-layers "$layers"
done
exit "$status"
