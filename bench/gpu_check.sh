#!/usr/bin/env bash
# The one command for a lent GPU machine (one GPU; torch and transformers, no vLLM, Ray or DeepSpeed,
# no network), run from the repository root:
#   bash bench/gpu_wheels.sh .whl      (here, where PyPI is reachable: DeepSpeed and what it needs)
#   bash bench/gpu_check.sh .whl       (there, with .whl carried along)
# Installs the wheels into a scratch target, then, with expandable segments as the GPU actors run:
#   1. the project's Learner with DeepSpeed on a 7B-wide model of 8 layers: ZeRO 3 with gradient
#      checkpointing (the 80 GB preset's way), then ZeRO 0 without (per-phase times, peaks vs plan);
#   2. the micro-batch table at the full 32 layers (1, 2, 4 questions x 256, 512 tokens,
#      checkpointing off and on), token_logprobs and AdamW (default and fused).
# Results: ${OUT:-bench/results}/gpu_*.json and .log. At most 8 minutes in all; exit status 0 only
# if every part ran.
set -uo pipefail

cd "$(dirname "$0")/.."
WHEELS=${1:-.whl}
OUT_DIR=${OUT:-bench/results}
PY=${PYTHON:-python3}
BUDGET=465 # seconds for every part together, after the install
mkdir -p "$OUT_DIR"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
export PYTORCH_CUDA_ALLOC_CONF=${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}
export TORCH_EXTENSIONS_DIR=/tmp/gpu_check_torch_extensions
SITE=/tmp/gpu_check_site
if compgen -G "$WHEELS/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$WHEELS"/*.whl ||
        { echo "installing the wheels from $WHEELS failed"; exit 3; }
    export PYTHONPATH="$SITE:$PWD"
else
    echo "no wheels in $WHEELS: the learner parts need DeepSpeed (bash bench/gpu_wheels.sh $WHEELS, here)"
    export PYTHONPATH="$PWD"
fi

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || echo "nvidia-smi failed (continuing)"
"$PY" -c 'import sys, torch, transformers; print(sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda, "transformers", transformers.__version__, "gpu", torch.cuda.is_available())'

status=0
start=$SECONDS
run() { # run NAME LIMIT ARGS...: one part, within its limit and what is left of the budget
    local name=$1 limit=$2 rc=0 left
    shift 2
    left=$((BUDGET - (SECONDS - start)))
    if [ "$left" -lt 30 ]; then
        echo "skipping $name: ${left} s left of the ${BUDGET} s budget"
        status=1
        return
    fi
    if [ "$limit" -gt "$left" ]; then limit=$left; fi
    echo
    echo "=== $name: gpu_check.py $* (limit ${limit} s) ==="
    timeout "$limit" "$PY" bench/gpu_check.py "$@" --out "$OUT_DIR/$name.json" 2>&1 | tee "$OUT_DIR/$name.log" || rc=$?
    echo "=== $name: exit $rc after $((SECONDS - start)) s in all ==="
    if [ "$rc" -ne 0 ]; then status=1; fi
}

run gpu_learner_zero3_ckpt 150 --cases learner --layers 8 --audio-layers 8 --zero 3 --checkpointing
run gpu_learner_zero0 150 --cases learner --layers 8 --audio-layers 8 --zero 0
run gpu_check_l32 300 --layers 32 --audio-layers 32
exit "$status"
