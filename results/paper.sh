#!/usr/bin/env bash
# The paper's sweep at the paper's settings: 12 architectures x 6 tasks = 72 runs (configs/<arch>.py and
# configs/<task>.py: E = 256, 12 blocks, the task's dimension, prompt length, curriculum, learning rate,
# 500k steps; MQAR's E = 128, 2 blocks), then the Table-3 evaluation. Runs go to out/paper/<arch>-<task>/.
#     bash results/paper.sh                  # train on every GPU of this machine (one run per GPU at a time),
#                                            # evaluate
#     bash results/paper.sh --dry-run        # print the 72 training commands, one per line, and nothing else
#     bash results/paper.sh --slurm          # write out/paper/sweep.sbatch: a SLURM array, one task per run
#     bash results/paper.sh --eval           # only the evaluation (results/paper_table3.md and _classical.md)
#     bash results/paper.sh --cost           # the projected cost of the sweep, from the steps/s
#                                            # the runs logged
#     bash results/paper.sh --archs=gpt2,mamba --tasks=linear_regression   # a subset
#     bash results/paper.sh --max_iters=2 --device=cpu                     # any --key=value goes to every run
# Resumable: a run with a checkpoint continues (--resume=True), a finished one resumes to nothing at once;
# stop and restart the script any time. One log per run: out/paper/<arch>-<task>.log. Environment: GPUS=0,2
# picks the GPUs; PAPER_OUT (default out/paper) and PAPER_TABLE (default results/paper_table3) move the
# outputs; EVAL_ARGS="--n_prompts=640" goes to evaluate.py.
set -euo pipefail
cd "$(dirname "$0")/.."

ARCHS=(gpt2 gpt2_rms gpt2_rope gpt2_swiglu gpt2_rms_swiglu gpt2_rms_rope gpt2_rope_swiglu llama
       llama_mamba_pos llama_mamba_ffn llama_mamba mamba)
TASKS=(linear_regression sparse_linear_regression relu2nn_regression decision_tree sparse_parity mqar)
MODE=train
EXTRA=()
for arg in "$@"; do
    case "$arg" in
        --dry-run) MODE=dry ;;
        --slurm) MODE=slurm ;;
        --eval) MODE=eval ;;
        --cost) MODE=cost ;;
        --archs=*) IFS=, read -r -a ARCHS <<< "${arg#--archs=}" ;;
        --tasks=*) IFS=, read -r -a TASKS <<< "${arg#--tasks=}" ;;
        --*=*) EXTRA+=("$arg") ;;
        *)
            echo "error: results/paper.sh does not take ${arg@Q} (see the header of results/paper.sh)" >&2
            exit 2
            ;;
    esac
done
OUT=${PAPER_OUT:-out/paper}
TABLE=${PAPER_TABLE:-results/paper_table3}
read -r -a EVAL_EXTRA <<< "${EVAL_ARGS:-}"

command_of() {  # ARCH TASK -> the training command (without --resume, which is decided when it runs)
    printf 'python train.py configs/%s.py configs/%s.py --out_dir=%s/%s-%s' "$1" "$2" "$OUT" "$1" "$2"
    for e in "${EXTRA[@]+"${EXTRA[@]}"}"; do printf ' %q' "$e"; done
    printf '\n'
}

PAIRS=()
for a in "${ARCHS[@]}"; do
    for t in "${TASKS[@]}"; do
        [ -f "configs/$a.py" ] || { echo "error: no architecture config configs/$a.py" >&2; exit 2; }
        [ -f "configs/$t.py" ] || { echo "error: no task config configs/$t.py" >&2; exit 2; }
        PAIRS+=("$a:$t")
    done
done

if [ "$MODE" = dry ]; then
    for p in "${PAIRS[@]}"; do command_of "${p%%:*}" "${p##*:}"; done
    exit 0
fi

if [ "$MODE" = slurm ]; then
    mkdir -p "$OUT"
    script="$OUT/sweep.sbatch"
    {
        echo '#!/usr/bin/env bash'
        echo '# a SLURM array: one task per (architecture, task) run; submit from the repository root:'
        echo "#     sbatch $script"
        echo '# resubmitting continues every unfinished run from its checkpoint. Set --time and the' \
            'partition for'
        echo '# your cluster: at 500k steps a run takes from hours to days (bash results/paper.sh --cost)'
        echo '#SBATCH --job-name=icl-paper'
        echo "#SBATCH --array=0-$((${#PAIRS[@]} - 1))"
        echo '#SBATCH --gres=gpu:1'
        echo '#SBATCH --cpus-per-task=4'
        echo '#SBATCH --time=48:00:00'
        echo "#SBATCH --output=$OUT/slurm-%A_%a.log"
        echo '#SBATCH --signal=B:TERM@300   # five minutes before the limit: train.py checkpoints and exits 0'
        echo '#SBATCH --requeue'
        echo 'set -euo pipefail'
        echo 'cd "${SLURM_SUBMIT_DIR:-.}"'
        printf 'PAIRS=(%s)\n' "${PAIRS[*]}"
        echo 'pair=${PAIRS[$SLURM_ARRAY_TASK_ID]}'
        echo 'arch=${pair%%:*}'
        echo 'task=${pair##*:}'
        echo "run=$OUT/\$arch-\$task"
        echo 'resume=()'
        echo '[ -f "$run/ckpt.pt" ] && resume=(--resume=True)'
        printf 'exec python train.py configs/$arch.py configs/$task.py --out_dir=$run '
        printf '"${resume[@]+"${resume[@]}"}"'
        for e in "${EXTRA[@]+"${EXTRA[@]}"}"; do printf ' %q' "$e"; done
        printf '\n'
    } > "$script"
    echo "wrote $script (${#PAIRS[@]} array tasks): sbatch $script"
    exit 0
fi

if [ "$MODE" = cost ]; then
    python - "$OUT" <<'PY'
import glob, json, os, sys
# the projected cost of the paper's 500k steps per run, from what each run logged; runs that have not run on a
# GPU are "not measured" (a CPU's steps/s says nothing about a GPU's)
out, steps, rows = sys.argv[1], 500_000, []
for run in sorted(glob.glob(os.path.join(out, '*-*'))):
    log, metrics = os.path.join(run, 'log.txt'), os.path.join(run, 'metrics.jsonl')
    if not (os.path.isfile(log) and os.path.isfile(metrics)):
        continue
    device = next((l.split(' on ')[1].split(' |')[0] for l in open(log)
                   if ' on ' in l and 'process(es)' in l), '?')
    rates = [json.loads(l).get('steps_per_s') for l in open(metrics) if l.endswith('\n')]
    rates = [r for r in rates[len(rates) // 2:] if r]  # the second half: past the warm-up
    rate = sorted(rates)[len(rates) // 2] if rates else None
    rows.append((os.path.basename(run), device, rate))
print('| run | device | steps/s | GPU-hours for 500k steps |\n|---|---|---|---|')
total, measured = 0.0, 0
for name, device, rate in rows:
    gpu = device.startswith('cuda') and rate
    hours = steps / rate / 3600 if gpu else None
    total += hours or 0
    measured += bool(gpu)
    cell = f'{hours:.1f}' if gpu else 'not measured (no GPU run)'
    print(f"| {name} | {device} | {rate if rate else '-'} | {cell} |")
print(f'\n{measured} of {len(rows)} runs measured on a GPU: {total:.0f} GPU-hours for those'
      + (' (the others are not measured)' if measured < len(rows) else ''))
PY
    exit 0
fi

if [ "$MODE" = train ]; then
    mkdir -p "$OUT/.gpu-locks"
    if [ -n "${GPUS:-}" ]; then
        IFS=, read -r -a GPU_IDS <<< "$GPUS"
    elif command -v nvidia-smi > /dev/null && nvidia-smi -L > /dev/null 2>&1; then
        mapfile -t GPU_IDS < <(nvidia-smi --query-gpu=index --format=csv,noheader)
    else
        GPU_IDS=(cpu)  # no GPU: one run at a time
    fi
    export OUT
    run_pair() {  # ARCH:TASK [EXTRA...]: train it on whichever GPU is free (a flock per GPU)
        local pair=$1
        shift
        local arch=${pair%%:*} task=${pair##*:}
        local run="$OUT/$arch-$task"
        local resume=()
        [ -f "$run/ckpt.pt" ] && resume=(--resume=True)
        while true; do
            for g in $GPU_IDS_LIST; do
                local visible=$g
                [ "$g" = cpu ] && visible=
                if flock -n -E 99 "$OUT/.gpu-locks/$g" env CUDA_VISIBLE_DEVICES="$visible" \
                        python train.py "configs/$arch.py" "configs/$task.py" "--out_dir=$run" \
                        "${resume[@]+"${resume[@]}"}" "$@" >> "$OUT/$arch-$task.log" 2>&1; then
                    echo "done: $arch-$task"
                    return 0
                else
                    code=$?
                    if [ "$code" != 99 ]; then
                        echo "FAILED: $arch-$task (exit $code; see $OUT/$arch-$task.log)"
                        return 0  # the others go on; rerun the script to retry it
                    fi
                fi
            done
            sleep 5  # every GPU busy
        done
    }
    export -f run_pair
    export GPU_IDS_LIST="${GPU_IDS[*]}"
    printf '%s\n' "${PAIRS[@]}" | xargs -P "${#GPU_IDS[@]}" -I{} bash -c 'run_pair "$@"' _ {} \
        "${EXTRA[@]+"${EXTRA[@]}"}"
fi

# the evaluation: Table 3 as the paper scores it (decision trees against the trained GPT-2, sparse parity
# against the trained Mamba), and against classical baselines that do not depend on training (3-NN, Bayes)
runs=()
for p in "${PAIRS[@]}"; do
    run="$OUT/${p%%:*}-${p##*:}"
    [ -f "$run/ckpt.pt" ] && runs+=("$run")
done
[ ${#runs[@]} -gt 0 ] || { echo "error: no trained runs in $OUT" >&2; exit 2; }
device=cpu
if python -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then device=cuda; fi
baseline_runs=()
[ -f "$OUT/gpt2-decision_tree/ckpt.pt" ] && baseline_runs+=("decision_tree=$OUT/gpt2-decision_tree")
[ -f "$OUT/mamba-sparse_parity/ckpt.pt" ] && baseline_runs+=("sparse_parity=$OUT/mamba-sparse_parity")
paper_baselines=()
if [ ${#baseline_runs[@]} -gt 0 ]; then
    paper_baselines=("--baseline_run=$(IFS=,; echo "${baseline_runs[*]}")")
fi
python evaluate.py "${runs[@]}" --device=$device "${paper_baselines[@]+"${paper_baselines[@]}"}" \
    "${EVAL_EXTRA[@]+"${EVAL_EXTRA[@]}"}" --out="$TABLE"
python evaluate.py "${runs[@]}" --device=$device --plot=False "${EVAL_EXTRA[@]+"${EVAL_EXTRA[@]}"}" \
    --out="${TABLE}_classical"
