#!/usr/bin/env bash
# One call, every benchmark on a CUDA machine, one table at the end (see bench/RESULTS.md).
#
#   bash bench/gpu.sh [--device cuda|cpu] [--quick] [--budget SECONDS]
#
# Runs, in float32 and in bfloat16: bench/explain.py per method on a BERT-base-sized classifier,
# bench/activations.py and bench/concurrency.py on it, bench/explain.py --causal (GPT-2- and
# Llama-style LMs of 12 layers x 768 with a 30522-token vocabulary, and the reuse table: prefix
# reuse and row dedup against the same model with reuse off), and bench/mixed.py on the
# classifier (small requests' latency beside a huge one, alone vs mixed; the huge request sized
# to ~1.5 s alone). Every model is randomly initialised from a config: no hub, no weights carried.
# Each bench gets a share of --budget (default 360 s: a twelfth, 30 s, each; two for causal),
# which with the CUDA tests' 90 s before and the setup keeps inside the 8 minutes a GPU call may
# take; one that runs out is reported as FAILED in the table. On CUDA, `pytest -m cuda
# tests/cuda` runs first.
#
# The GPU machine has no package registry: `make bench-gpu-prepare` builds here the abi3 wheel of
# this project and copies the MiniLM tokenizer into .gpu/; carry .gpu and this script installs
# the wheel (no dependencies: torch, transformers, grpcio, protobuf, numpy are there already).
# Without .gpu/ (a dry run here: --device cpu --quick) it uses the checkout's .venv.
set -uo pipefail
cd "$(dirname "$0")/.."
device=cuda
quick=""
budget=360
while [ $# -gt 0 ]; do
    case "$1" in
        --device) device=$2; shift 2 ;;
        --quick) quick=--quick; shift ;;
        --budget) budget=$2; shift 2 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
if ls .gpu/wheels/*.whl >/dev/null 2>&1; then
    py=${PYTHON:-python3}
    "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$work/site" .gpu/wheels/*.whl || exit 1
    export PYTHONPATH="$work/site"
    export EXPLAINSERVE_BENCH_TOKENIZER="$PWD/.gpu/tokenizer"
    tokenizer=(--tokenizer "$PWD/.gpu/tokenizer")
else
    py=${PYTHON:-.venv/bin/python}
    tokenizer=()
fi
"$py" -c 'import torch, explainserve._native; print("# torch", torch.__version__, "cuda", torch.cuda.is_available())' || exit 1
# --quick (a dry run on a CPU): 2 layers x 128 instead of 12 x 768, same vocabulary.
if [ -n "$quick" ]; then size=(--layers 2 --width 128); lm=(--lm-layers 2 --lm-width 128)
else size=(--layers 12 --width 768); lm=(--lm-layers 12 --lm-width 768); fi
bert=$("$py" bench/gpu_models.py "$work/models" "${tokenizer[@]}" "${size[@]}" 2>/dev/null) || exit 1
log=${OUT:-$work}/gpu-bench.log
: >"$log"
# Per dtype: explain, activations, concurrency, mixed one share each, causal (two tables) two.
share=$((budget / 12))
run() {  # NAME DTYPE SHARES COMMAND...
    local name=$1 dtype=$2 shares=$3
    shift 3
    echo "=== $name $dtype ===" | tee -a "$log"
    local t0=$SECONDS
    timeout $((share * shares)) "$py" "$@" --device "$device" --dtype "$dtype" $quick 2>&1 \
        | grep -v '^\[transformers\]' | tee -a "$log"
    local rc=${PIPESTATUS[0]}
    [ "$rc" -eq 0 ] || echo "# FAILED (exit $rc, limit $((share * shares)) s)" | tee -a "$log"
    # What each bench took, to size the shares from (the summary ignores it).
    echo "# took $((SECONDS - t0)) s of $((share * shares)) s" | tee -a "$log"
}
if [ "$device" = cuda ]; then
    echo "=== cuda-tests - ===" | tee -a "$log"
    timeout 90 "$py" -m pytest -q -p no:cacheprovider -m cuda tests/cuda 2>&1 | tail -15 | tee -a "$log"
    [ "${PIPESTATUS[0]}" -eq 0 ] || echo "# FAILED: pytest -m cuda" | tee -a "$log"
fi
for dtype in float32 bfloat16; do
    run explain "$dtype" 1 bench/explain.py --model-dir "$bert" --repeats 2
    run activations "$dtype" 1 bench/activations.py --model-dir "$bert" --inputs 300 --repeats 2
    run concurrency "$dtype" 1 bench/concurrency.py --model-dir "$bert" --clients 8 --requests-per-client 2 --repeats 1
    causal=(bench/explain.py --causal "${lm[@]}" --repeats 2)
    # A CPU dry run emulates bfloat16 products: there the efficiency table's gradient methods
    # alone ran past 400 s (2026-11-29; bf16 saliency 6.8 s against 0.56 s in float32), so it
    # runs the reuse table only, which still takes every bfloat16 prefix path.
    if [ "$device" = cpu ] && [ "$dtype" = bfloat16 ]; then causal+=(--reuse-only); fi
    run causal "$dtype" 2 "${causal[@]}"
    # The accelerator's sizing given explicitly, so that a dry run on a CPU takes the same path
    # (the huge request sized by timed probes, not mixed.py's CPU default of 512 coalitions);
    # 1.5 s, not mixed.py's 2, so that its one share holds the start-up (imports, load, warm-up
    # and calibration: ~25 of the 35 s the CPU dry run took), the probes and two pairs.
    run mixed "$dtype" 1 bench/mixed.py --model-dir "$bert" --huge-seconds 1.5 --rate 20
done
echo
"$py" bench/gpu_summary.py "$log"
