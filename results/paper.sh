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
#     bash results/paper.sh --archs=gpt2,mamba --tasks=linear_regression   # a subset of the paper's names
#     bash results/paper.sh --max_iters=2 --device=cpu                     # any --key=value goes to every run
# (--out_dir and --resume are refused: each run has its own directory, PAPER_OUT/<arch>-<task>, and the
# sweep decides resuming.) Resumable: every run is started with --resume=auto, so a new run starts, an
# unfinished one continues from its checkpoint and a finished one is left as it is; stop and restart the
# script any time. After each run the script reads the run's checkpoint (train.run_status), since train.py
# exits 0 when a signal stops it too: `done: RUN` when it reached max_iters; `stopped: RUN at step N of M`
# when a signal stopped it (Ctrl-C, a TERM to the script or to that train.py). A stop stops the sweep: a
# signal to it means its user wants it to end, so every running train.py is asked to checkpoint, no new run
# starts, nothing is evaluated, and the script exits 1; run the same command again to continue. A run that
# fails (`FAILED: RUN`) does not stop the others; the finished ones are evaluated and the script exits 1.
# The evaluation (here and --eval) scores finished runs only, and names each unfinished one it leaves out.
# One log per run: out/paper/<arch>-<task>.log. Environment: GPUS=0,2 picks the GPUs; PAPER_OUT (default
# out/paper) and PAPER_TABLE (default results/paper_table3) move the outputs; EVAL_ARGS="--n_prompts=640"
# goes to evaluate.py. The SLURM array does the same per task: a task stopped by SLURM's TERM five minutes
# before its time limit requeues itself and continues from its checkpoint; a finished one exits 0.
set -euo pipefail
cd "$(dirname "$0")/.."

# the paper's names, explicitly (not every config or task of this code): --archs/--tasks pick among these
PAPER_ARCHS=(gpt2 gpt2_rms gpt2_rope gpt2_swiglu gpt2_rms_swiglu gpt2_rms_rope gpt2_rope_swiglu llama
             llama_mamba_pos llama_mamba_ffn llama_mamba mamba)
PAPER_TASKS=(linear_regression sparse_linear_regression relu2nn_regression decision_tree sparse_parity mqar)
ARCHS=("${PAPER_ARCHS[@]}")
TASKS=("${PAPER_TASKS[@]}")

fail() {  # MESSAGE: bad input, one line, before anything is written or started
    echo "error: $*" >&2
    exit 2
}

MODE=train
EXTRA=()
failed=()
for arg in "$@"; do
    case "$arg" in
        --dry-run) MODE=dry ;;
        --slurm) MODE=slurm ;;
        --eval) MODE=eval ;;
        --cost) MODE=cost ;;
        --archs=*) IFS=, read -r -a ARCHS <<< "${arg#--archs=}" ;;
        --tasks=*) IFS=, read -r -a TASKS <<< "${arg#--tasks=}" ;;
        # one directory for 72 runs would mix them; a second --resume would undo --resume=auto
        --out_dir=*) fail "--out_dir: each run has its own, PAPER_OUT/<arch>-<task>; set PAPER_OUT instead" ;;
        --resume=*) fail "--resume: the sweep resumes by itself (--resume=auto); leave it out" ;;
        --*=*) EXTRA+=("$arg") ;;
        *) fail "results/paper.sh does not take ${arg@Q} (see the header of results/paper.sh)" ;;
    esac
done

check_names() {  # OPTION CHOSEN ALLOWED (array names): a non-empty list of ALLOWED's names, each once
    local -n chosen=$2 allowed=$3
    local seen=' ' name
    [ ${#chosen[@]} -gt 0 ] || fail "$1= names nothing; give some of: ${allowed[*]}"
    for name in "${chosen[@]}"; do
        [[ " ${allowed[*]} " == *" $name "* ]] || fail "$1: ${name@Q} is not one of: ${allowed[*]}"
        [[ "$seen" != *" $name "* ]] || fail "$1 names $name twice"
        seen+="$name "
        [ -f "configs/$name.py" ] || fail "no config configs/$name.py"
    done
}
check_names --archs ARCHS PAPER_ARCHS
check_names --tasks TASKS PAPER_TASKS

OUT=${PAPER_OUT:-out/paper}
TABLE=${PAPER_TABLE:-results/paper_table3}
read -r -a EVAL_EXTRA <<< "${EVAL_ARGS:-}"

PAIRS=()
for a in "${ARCHS[@]}"; do
    for t in "${TASKS[@]}"; do
        PAIRS+=("$a:$t")
    done
done

command_of() {  # ARCH TASK -> the training command, as the sweep runs it (quoted: runnable as printed)
    printf 'python train.py configs/%s.py configs/%s.py --out_dir=%q --resume=auto' "$1" "$2" "$OUT/$1-$2"
    for e in "${EXTRA[@]+"${EXTRA[@]}"}"; do printf ' %q' "$e"; done
    printf '\n'
}

status_of() {  # RUN...: one line "STATE STEP MAX_ITERS" per run, from train.run_status (one interpreter)
    python -c '
import sys, train
for run in sys.argv[1:]:
    try:
        s = train.run_status(run)
    except (train.UserError, OSError):  # run files but no checkpoint that loads
        s = dict(state="unreadable", step="-", max_iters="-")
    print(s["state"], s["step"], s["max_iters"])' "$@"
}

if [ "$MODE" = dry ]; then
    for p in "${PAIRS[@]}"; do command_of "${p%%:*}" "${p##*:}"; done
    exit 0
fi

if [ "$MODE" = slurm ]; then
    # (an #SBATCH line is not a shell line: its path can be double-quoted, but not escaped)
    if [[ "$OUT" == *[\"%\\$'\n']* ]]; then
        fail "PAPER_OUT=${OUT@Q}: an #SBATCH --output path cannot hold a quote, %, backslash or newline"
    fi
    mkdir -p "$OUT"
    script="$OUT/sweep.sbatch"
    {
        echo '#!/usr/bin/env bash'
        echo '# a SLURM array: one task per (architecture, task) run; submit from the repository root:'
        printf '#     sbatch %q\n' "$script"
        echo '# resubmitting continues every unfinished run from its checkpoint. Set --time and the' \
            'partition for'
        echo '# your cluster: at 500k steps a run takes from hours to days (bash results/paper.sh --cost)'
        echo '#SBATCH --job-name=icl-paper'
        echo "#SBATCH --array=0-$((${#PAIRS[@]} - 1))"
        echo '#SBATCH --gres=gpu:1'
        echo '#SBATCH --cpus-per-task=4'
        echo '#SBATCH --time=48:00:00'
        printf '#SBATCH --output="%s"\n' "$OUT/slurm-%A_%a.log"
        echo '#SBATCH --signal=B:TERM@300   # five minutes before the limit, to this shell: it passes it on'
        echo '#SBATCH --requeue'
        echo 'set -euo pipefail'
        echo 'cd "${SLURM_SUBMIT_DIR:-.}"'
        printf 'PAIRS=(%s)\n' "${PAIRS[*]}"
        printf 'out=%q\n' "$OUT"
        printf 'extra=('
        for e in "${EXTRA[@]+"${EXTRA[@]}"}"; do printf ' %q' "$e"; done
        printf ' )\n'
        cat << 'TASK'
: "${SLURM_ARRAY_TASK_ID:?is not set: submit this script with sbatch}"
pair=${PAIRS[$SLURM_ARRAY_TASK_ID]}
run="$out/${pair%%:*}-${pair##*:}"
name=${run##*/}
stop=
pid=
trap 'stop=1; [ -z "$pid" ] || kill -TERM "$pid" 2> /dev/null || true' TERM
# train.py in the background, so that SLURM's TERM reaches this shell's trap at once (a foreground child
# would hold it back until it ended) and is passed on: train.py checkpoints and exits 0
python train.py "configs/${pair%%:*}.py" "configs/${pair##*:}.py" "--out_dir=$run" --resume=auto \
    "${extra[@]+"${extra[@]}"}" &
pid=$!
[ -z "$stop" ] || kill -TERM "$pid" 2> /dev/null || true  # a TERM before $pid was set
# a trapped TERM ends `wait` early: wait until train.py is gone, then once more for its exit status
while kill -0 "$pid" 2> /dev/null; do
    wait "$pid" || true
done
code=0
wait "$pid" || code=$?
if [ "$code" != 0 ]; then
    echo "FAILED: $name (exit $code)"
    exit "$code"
fi
# exit 0 does not mean finished: a signal stops train.py with a checkpoint and exit 0 too
read -r state step max_iters < <(python -c '
import sys, train
s = train.run_status(sys.argv[1])
print(s["state"], s["step"], s["max_iters"])' "$run")
if [ "$state" = finished ]; then
    echo "done: $name"
    exit 0
fi
echo "stopped: $name at step $step of $max_iters; requeued, to continue from its checkpoint"
scontrol requeue "${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}"
TASK
    } > "$script"
    printf 'wrote %s (%d array tasks): sbatch %q\n' "$script" "${#PAIRS[@]}" "$script"
    exit 0
fi

if [ "$MODE" = cost ]; then
    names=()
    for p in "${PAIRS[@]}"; do names+=("${p%%:*}-${p##*:}"); done
    python - "$OUT" "${names[@]}" << 'PY'
import json, os, sys
# the projected cost of the paper's 500k steps per run, from what each run logged; runs that have not run on a
# GPU are "not measured" (a CPU's steps/s says nothing about a GPU's)
out, names, steps, rows = sys.argv[1], sys.argv[2:], 500_000, []


def rate_of(line):  # a metrics row's steps/s; None for a row without one, or a line that is no row at all
    try:                      # (train.py skips garbage lines too: a killed write, a disk error)
        row = json.loads(line)
    except ValueError:
        return None
    return row.get('steps_per_s') if isinstance(row, dict) else None


for name in names:
    log, metrics = os.path.join(out, name, 'log.txt'), os.path.join(out, name, 'metrics.jsonl')
    if not (os.path.isfile(log) and os.path.isfile(metrics)):
        continue
    with open(log, errors='replace') as f:
        device = next((l.split(' on ')[1].split(' |')[0] for l in f
                       if ' on ' in l and 'process(es)' in l), '?')
    with open(metrics, errors='replace') as f:
        rates = [rate_of(l) for l in f if l.endswith('\n')]
    rates = [r for r in rates[len(rates) // 2:] if isinstance(r, (int, float)) and r > 0]  # past the warm-up
    rate = sorted(rates)[len(rates) // 2] if rates else None
    rows.append((name, device, rate))
if not rows:
    # (a pilot of its own, so that its short runs and table stay apart from the real sweep's; without the
    # curriculum, so that every step is at the full prompt size that most of the 500k steps run at)
    print(f"no runs in {out} yet, so no steps/s to project from: first run a short pilot on the GPU, "
          "PAPER_OUT=out/paper-pilot PAPER_TABLE=out/paper-pilot/table3 bash results/paper.sh "
          "--max_iters=1000 --curriculum=False, then PAPER_OUT=out/paper-pilot bash results/paper.sh --cost",
          file=sys.stderr)
    sys.exit(1)
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
    command -v flock > /dev/null || fail "flock (util-linux) is needed: it keeps two runs off one GPU"
    if [ -n "${GPUS:-}" ]; then
        IFS=, read -r -a GPU_IDS <<< "$GPUS"
    elif command -v nvidia-smi > /dev/null && nvidia-smi -L > /dev/null 2>&1; then
        mapfile -t GPU_IDS < <(nvidia-smi --query-gpu=index --format=csv,noheader)
    else
        GPU_IDS=(cpu)  # no GPU: one run at a time
    fi
    mkdir -p "$OUT/.gpu-locks"
    # this sweep's own bookkeeping: which runs a lane has taken, whether to stop, which runs failed
    STATE=$(mktemp -d)
    trap 'rm -rf "$STATE"' EXIT

    run_pair() {  # GPU ARCH:TASK: train it there, then say where it stands (in a lane: sets its $pid)
        local arch=${2%%:*} task=${2##*:}
        local name=$arch-$task
        local run=$OUT/$name visible=$1 code=0 state step max_iters
        [ "$1" = cpu ] && visible=
        # in the background, so that the lane's trap can pass a TERM on to it at once
        CUDA_VISIBLE_DEVICES=$visible python train.py "configs/$arch.py" "configs/$task.py" "--out_dir=$run" \
            --resume=auto "${EXTRA[@]+"${EXTRA[@]}"}" >> "$OUT/$name.log" 2>&1 &
        pid=$!
        # a stop asked for while it was starting: the trap may have seen the previous $pid
        [ ! -e "$STATE/stop" ] || kill -TERM "$pid" 2> /dev/null || true
        # a trapped signal ends `wait` early: wait until train.py is gone, then once more for its status
        while kill -0 "$pid" 2> /dev/null; do
            wait "$pid" || true
        done
        wait "$pid" || code=$?
        pid=
        read -r state step max_iters < <(status_of "$run") || true
        if [ "$state" = finished ] && { [ "$code" = 0 ] || [ -e "$STATE/stop" ]; }; then
            echo "done: $name"
        elif [ "$state" = unfinished ] && { [ "$code" = 0 ] || [ -e "$STATE/stop" ]; }; then
            # exit 0 short of max_iters: a signal stopped it, which stops the sweep
            touch "$STATE/stop"
            echo "stopped: $name at step $step of $max_iters"
        elif [ -e "$STATE/stop" ]; then
            echo "stopped: $name before its first checkpoint"
        else
            touch "$STATE/failed-$name"
            echo "FAILED: $name (exit $code; see $OUT/$name.log)"
        fi
    }

    lane() {  # GPU: the runs no other lane has taken, one at a time on this GPU, until none is left or a stop
        local gpu=$1 pid= lock i
        # a signal (TERM from the sweep's trap; TERM, HUP or Ctrl-C's INT to the whole process group) stops
        # the sweep and is passed on to the lane's train.py (which ignores an INT: a background job's)
        trap 'touch "$STATE/stop"; [ -z "$pid" ] || kill -TERM "$pid" 2> /dev/null || true' TERM HUP INT
        exec {lock}> "$OUT/.gpu-locks/$gpu"
        for i in "${!PAIRS[@]}"; do
            [ ! -e "$STATE/stop" ] || return 0
            until flock -n "$lock"; do  # another sweep's run is on this GPU
                sleep 5
                [ ! -e "$STATE/stop" ] || return 0
            done
            if mkdir "$STATE/taken-$i" 2> /dev/null; then
                run_pair "$gpu" "${PAIRS[$i]}"
            fi
            flock -u "$lock"
        done
    }

    lanes=()
    # a signal to the sweep (Ctrl-C, TERM, HUP) reaches the lanes, and through them every running train.py
    trap 'touch "$STATE/stop"; kill -TERM "${lanes[@]}" 2> /dev/null || true' INT TERM HUP
    for g in "${GPU_IDS[@]}"; do
        lane "$g" &
        lanes+=("$!")
    done
    until wait; do :; done  # (a trapped signal ends `wait` early)
    if [ -e "$STATE/stop" ]; then
        echo "the sweep stopped before its runs finished; run the same command again to continue them" >&2
        exit 1
    fi
    shopt -s nullglob
    failed=("$STATE"/failed-*)
    shopt -u nullglob
fi

# the evaluation: Table 3 as the paper scores it (decision trees against the trained GPT-2, sparse parity
# against the trained Mamba), and against classical baselines that do not depend on training (3-NN, Bayes).
# Finished runs only: a run short of its max_iters would be scored as if it were the paper's
dirs=()
for p in "${PAIRS[@]}"; do dirs+=("$OUT/${p%%:*}-${p##*:}"); done
dirs+=("$OUT/gpt2-decision_tree" "$OUT/mamba-sparse_parity")  # the paper's two trained baselines
mapfile -t states < <(status_of "${dirs[@]}")
if [ ${#states[@]} != ${#dirs[@]} ]; then
    echo "error: could not read the runs' checkpoints (python -c 'import train' fails?)" >&2
    exit 1
fi
runs=()
for i in "${!PAIRS[@]}"; do
    read -r state step max_iters <<< "${states[$i]}"
    case "$state" in
        finished) runs+=("${dirs[$i]}") ;;
        unfinished) echo "left out: ${dirs[$i]##*/} (unfinished: step $step of $max_iters)" ;;
        unreadable) echo "left out: ${dirs[$i]##*/} (no checkpoint that loads)" ;;
    esac
done
[ ${#runs[@]} -gt 0 ] || { echo "error: no finished runs in $OUT" >&2; exit 2; }
device=cpu
if python -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then device=cuda; fi
baseline_runs=()
[[ "${states[${#PAIRS[@]}]}" != finished* ]] || baseline_runs+=("decision_tree=$OUT/gpt2-decision_tree")
[[ "${states[${#PAIRS[@]} + 1]}" != finished* ]] || baseline_runs+=("sparse_parity=$OUT/mamba-sparse_parity")
paper_baselines=()
if [ ${#baseline_runs[@]} -gt 0 ]; then
    paper_baselines=("--baseline_run=$(IFS=,; echo "${baseline_runs[*]}")")
fi
python evaluate.py "${runs[@]}" --device=$device "${paper_baselines[@]+"${paper_baselines[@]}"}" \
    "${EVAL_EXTRA[@]+"${EVAL_EXTRA[@]}"}" --out="$TABLE"
python evaluate.py "${runs[@]}" --device=$device --plot=False "${EVAL_EXTRA[@]+"${EVAL_EXTRA[@]}"}" \
    --out="${TABLE}_classical"
if [ ${#failed[@]} -gt 0 ]; then
    echo "${#failed[@]} run(s) FAILED (see the FAILED: lines); the tables have the finished ones" >&2
    exit 1
fi
