#!/usr/bin/env bash
# The GPU round's measurements in one pass, for a machine with a CUDA GPU (the README's Performance
# section and results/gpu_h200.md quote what it prints): the scan checked against the fp64 reference and
# timed with its GB/s next to the copy bandwidth, the training-step tables, the quick tests, --compile and
# CUDA graphs, bf16, and the mission's torchrun command. Every step has its own time limit and writes one
# small text file; a failing step is reported and the next one runs.
#     bash .ci/gpu_check.sh OUT_DIR                   # on the GPU machine: about 8 minutes on an H200
#     GPU_CHECK_CPU=1 bash .ci/gpu_check.sh OUT_DIR   # the same steps at tiny sizes on a CPU: a dry run of
#                                                     # this script before spending GPU time on it
# Then `tail -n 40 OUT_DIR/*.txt` (summary.txt lists each step's exit status and seconds).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:?give an output folder: bash .ci/gpu_check.sh OUT_DIR}
mkdir -p "$out"
runs=$(mktemp -d)   # the runs' directories: checkpoints stay here, never in OUT_DIR
trap 'rm -rf "$runs"' EXIT
if [ -n "${GPU_CHECK_CPU:-}" ]; then
    dev=cpu
    size=(--n_layer=2 --n_embd=32 --n_head=4 --n_dims=5 --n_points=11)
    steps=20
    bench=(--sections=check --reps=1)
    steps_bench=(--sections=small --reps=1)
    tests=(-k "scan and not triton" -x)
else
    dev=cuda
    size=()
    steps=300
    bench=(--sections=check,scan)
    steps_bench=(--sections=small,paper)
    tests=()
fi
: > "$out/summary.txt"

step() {  # NAME LIMIT_S COMMAND...: run it, its output to OUT_DIR/NAME.txt, one summary line
    local name=$1 limit=$2
    shift 2
    local t0=$SECONDS
    echo "\$ $*" > "$out/$name.txt"
    timeout "$limit" "$@" >> "$out/$name.txt" 2>&1
    local code=$?
    echo "$name: exit $code in $((SECONDS - t0)) s" | tee -a "$out/summary.txt"
}

step versions 60 python -c "import torch, triton, sys; print('python', sys.version.split()[0], '| torch',
    torch.__version__, '| triton', triton.__version__, '| cuda', torch.cuda.is_available() and
    torch.cuda.get_device_name())"
step scan 240 python bench.py --device=$dev "${bench[@]}"
step steps 240 python bench.py --device=$dev "${steps_bench[@]}"
step tests 420 python -m pytest -q -m "not slow" -p no:cacheprovider "${tests[@]}"
train=(python train.py configs/llama_mamba.py "${size[@]}" --max_iters=$steps --log_interval=50
       --eval_interval=100 --device=$dev)
step eager 180 "${train[@]}" --out_dir="$runs/eager"
step compile 300 "${train[@]}" --compile=True --out_dir="$runs/compile"
step graphs 300 "${train[@]}" --compile=True --compile_mode=reduce-overhead --out_dir="$runs/graphs"
if [ "$dev" = cuda ]; then
    step bf16 180 python train.py configs/gpt2.py --max_iters=$steps --log_interval=50 --dtype=bfloat16 \
        --device=cuda --out_dir="$runs/bf16"
    step fp32 180 python train.py configs/gpt2.py --max_iters=$steps --log_interval=50 --device=cuda \
        --out_dir="$runs/fp32"
    step torchrun 180 torchrun --standalone --nproc_per_node=1 train.py configs/llama_mamba.py \
        --max_iters=$steps --log_interval=50 --out_dir="$runs/torchrun"
fi
# each training step's last logged speed, next to its name
for f in "$out"/{eager,compile,graphs,bf16,fp32,torchrun}.txt; do
    if [ -f "$f" ]; then
        speed=$(grep -o 'steps_per_s [0-9.]*' "$f" | tail -1)
        echo "$(basename "$f" .txt): $speed" | tee -a "$out/summary.txt"
    fi
done
