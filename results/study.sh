#!/usr/bin/env bash
# The CPU-scale study of RESULTS.md: trains the sweeps of configs/study/ (one spec per experiment) and
# evaluates them.
#     bash results/study.sh            # experiments 1-5: train (two one-thread runs at a time), then evaluate
#     bash results/study.sh eval       # evaluate only (the runs must exist in out/study/)
#     bash results/study.sh followups  # the longer follow-ups (d = 6 parity, 3,000-step Llama MQAR), trained
#                                      # and evaluated
#     bash results/study.sh part2      # experiments 6-9 (RESULTS.md part 2): train, evaluate
#     bash results/study.sh part2 eval # evaluate part 2 only (whichever of its runs exist)
#     bash results/study.sh part2 eval tree   # one experiment of part 2: sparse, tree, mlp or rest
#     bash results/study.sh part3      # experiments 12-15 (RESULTS.md part 3): train, then each spec's table
#     bash results/study.sh part3 eval # the tables of part 3 only (whichever of its runs exist)
#     bash results/study.sh part3 eval tree_init   # one experiment's table
#     bash results/study.sh verdicts   # parts 1-2's saved scores read by part 3's verdict rule (no runs
#                                      # needed): results/part12_verdicts.txt
# Interrupt it any time and run it again: each run resumes from its last checkpoint, finished runs are
# skipped (sweep.py); a sweep with a failed run ends the script after its report. Each run's log is
# out/study/<run>/log.txt (and its output train.out); python sweep.py configs/study/<experiment>.py --dry-run
# lists an experiment's runs and their commands.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1   # one thread per job: two jobs fill two cores without thrashing
mkdir -p out/study

train() {  # the given experiments' sweeps, one after the other, two runs at a time (the evaluation is below)
    for experiment in "$@"; do
        python sweep.py "configs/study/$experiment.py" --jobs=2 --threads=1 --evaluate=False
    done
}

score_by_step() {  # TITLE YLABEL PNG JSON...: score against training step, one line per run
    # (from evaluate.py --all_ckpts JSONs; the shell expands their names, braces included)
    python - "$@" <<'PY'
import json, sys, matplotlib
matplotlib.use('agg')
import matplotlib.pyplot as plt
title, ylabel, png = sys.argv[1:4]
fig, ax = plt.subplots(figsize=(6.4, 4))
for path in sorted(sys.argv[4:]):
    r = json.load(open(path))
    pts = [(c['step'], c['score']['score'], 1.96 * c['score']['se']) for c in r['checkpoints']]
    print(r['arch'].ljust(12), '  '.join(f'step {s}: {v:.3f} ± {e:.3f}' for s, v, e in pts))
    ax.errorbar([p[0] for p in pts], [p[1] for p in pts], [p[2] for p in pts],
                marker='o', capsize=2, label=r['arch'])
ax.axhline(1, color='gray', ls=':', lw=1)
ax.set(xlabel='training step', ylabel=ylabel, title=title)
ax.legend(fontsize=8)
fig.tight_layout()
fig.savefig(png, dpi=110)
PY
}

times() {  # RUN...: per run its last held-out loss and the 'done at step' line(s) of its log (with the
    # training time), then their sum
    python - "$@" <<'PY'
import json, os, re, sys
total = 0.0
for run in sys.argv[1:]:
    rows = [json.loads(line) for line in open(os.path.join(run, 'metrics.jsonl'))]
    val = [r for r in rows if 'val_loss' in r][-1]
    done = [line.strip() for line in open(os.path.join(run, 'log.txt')) if line.startswith('done at step')]
    total += sum(float(t) for t in re.findall(r'steps in ([0-9.]+)s\)', ' '.join(done)))
    print(f"{os.path.basename(run)}: val_loss {val['val_loss']:.4f} at step {val['step']}; {'; '.join(done)}")
print(f"{len(sys.argv) - 1} runs, {total:,.0f} s of one-thread training in all ({total / 3600:.1f} h; "
      f"a resumed run counts its last part only)")
PY
}

S=out/study

finished() {  # those of the given run directories whose run reached its last step: part 2 evaluates what was
    for d in "$@"; do                                      # trained to the end, never a run stopped half-way
        if grep -qs '^done at step' "$d/log.txt"; then
            echo "$d"
        fi
    done
}

part2_eval() {  # [sparse|tree|mlp|rest] experiments 6-9 (default all): every number RESULTS.md part 2 quotes
    local arms       # is printed here or written to results/
    local only=${1:-all}
    if [ "$only" = all ] || [ "$only" = sparse ]; then
    # 6. sparse linear: every kept checkpoint against the Lasso (the task's baseline), against least
    # squares, and on plain linear regression (cross-task: paper Fig. 4b); then the means over seeds
    # the error curves of one seed per arm next to least squares and the Lasso: first, because it rewrites
    # those runs' JSONs with their last checkpoint only, and the --all_ckpts call below restores every one
    python evaluate.py $(finished $S/sparse_{gpt2,gpt2_rms,gpt2_rms_quirks,gpt2_rms_swiglu}_s1337 \
        $S/sparse_{gpt2_rms_swiglu_quirks,gpt2_swiglu,gpt2_rope,gpt2_rms_rope,gpt2_rope_swiglu}_s1337 \
        $S/sparse_{llama,mamba,llama_mamba}_s1337) \
        --out=results/sparse_curves_s1337
    python evaluate.py $(finished $S/sparse_*) --all_ckpts=True --plot=False
    python evaluate.py $(finished $S/sparse_*) --all_ckpts=True --plot=False --score_vs=least_squares
    python evaluate.py $(finished $S/sparse_*) --all_ckpts=True --plot=False --task=linear_regression
    arms=sparse_gpt2,sparse_gpt2_rms,sparse_gpt2_rms_quirks,sparse_gpt2_rms_swiglu
    arms=$arms,sparse_gpt2_rms_swiglu_quirks
    arms=$arms,sparse_gpt2_swiglu,sparse_gpt2_rope,sparse_gpt2_rms_rope,sparse_gpt2_rope_swiglu,sparse_llama
    arms=$arms,sparse_mamba,sparse_llama_mamba
    python results/seeds.py "$S/sparse_*/eval_sparse_linear_regression.json" --arms=$arms --positions=0-10 \
        --out=results/sparse_vs_lasso --title='Sparse linear (d = 8, k = 2): score vs the Lasso by step'
    # every arm at step 4,000, where the hybrid (trained 4,000 steps, the transformers 6,000) stops
    python results/seeds.py "$S/sparse_*/eval_sparse_linear_regression.json" --arms=$arms --step=4000 \
        --out=results/sparse_vs_lasso_step4000 --title='Sparse linear (d = 8, k = 2): score vs the Lasso'
    python results/seeds.py "$S/sparse_*/eval_sparse_linear_regression_vs_least_squares.json" --arms=$arms \
        --out=results/sparse_vs_ls --title='Sparse linear (d = 8, k = 2): score vs least squares by step'
    python results/seeds.py "$S/sparse_*/eval_linear_regression.json" --arms=$arms --positions=0-10 \
        --out=results/sparse_on_linear --title='Trained on sparse linear, scored on linear (vs least squares)'
    # Figs. 4 and 5: the two SwiGLU arms' every checkpoint against least squares, and on plain linear
    arms=sparse_gpt2_rms_swiglu,sparse_gpt2_swiglu
    python results/seeds.py "$S/sparse_*/eval_sparse_linear_regression_vs_least_squares.json" --arms=$arms \
        --out=results/fig45_vs_ls --title='Sparse linear: the SwiGLU arms against least squares by step'
    python results/seeds.py "$S/sparse_*/eval_linear_regression.json" --arms=$arms \
        --out=results/fig45_on_linear --title='Trained on sparse linear, scored on linear: the SwiGLU arms'
    # how far apart the two schemes are, here and at the paper's setting (6,400 prompts)
    python - <<'PY'
import torch, tasks, baselines, evaluate
for d, n, k in ((8, 17, 2), (20, 41, 3)):
    xs, ys = tasks.sample('sparse_linear_regression', 6400, n, d, torch.Generator().manual_seed(0),
                          sparsity=k)
    err = {b: (baselines.BASELINES[b](xs, ys) - ys).pow(2).mean(-1)
           for b in ('zero', 'least_squares', 'lasso')}
    s = evaluate.score(err['least_squares'], err['zero'], err['lasso'])
    t = evaluate.score(err['lasso'], err['zero'], err['least_squares'])
    print(f"d = {d}, k = {k}, {n} points: least squares scores {s['score']:.3f} ± {1.96 * s['se']:.3f} "
          f"vs the Lasso; "
          f"the Lasso {t['score']:.3f} ± {1.96 * t['se']:.3f} vs least squares")
    for name, label in (('least_squares', 'least squares:'), ('lasso', 'the Lasso:    ')):
        curve = err[name].mean(0)[:d + 1]
        print('   error by context length,', label, ' '.join(f'{v:.2f}' for v in curve))
PY
    fi
    if [ "$only" = all ] || [ "$only" = tree ]; then
    # 7. decision trees: every kept checkpoint against the trained GPT-2 (seed 1337, the paper's protocol),
    # the last one against 3-NN, which does not depend on training
    # one seed per arm against every baseline (first: see the sparse-linear curves above)
    python evaluate.py $(finished $S/tree_{gpt2,gpt2_rms,gpt2_rms_quirks,llama,mamba,mamba_quirks}_s1337 \
        $S/tree_llama_mamba_pos_s1337) \
        --baseline_run=$S/tree_gpt2_s1337 --out=results/tree_curves_s1337
    python evaluate.py $(finished $S/tree_*) --all_ckpts=True --plot=False --baseline_run=$S/tree_gpt2_s1337
    python evaluate.py $(finished $S/tree_*) --plot=False --score_vs=knn
    arms=tree_gpt2,tree_gpt2_rms,tree_gpt2_rms_quirks,tree_llama,tree_mamba,tree_mamba_quirks
    arms=$arms,tree_llama_mamba_pos
    python results/seeds.py "$S/tree_*/eval_decision_tree.json" --arms=$arms --out=results/tree_vs_gpt2 \
        --title='Decision trees (d = 5, depth 4): score vs the trained GPT-2 by step'
    python results/seeds.py "$S/tree_*/eval_decision_tree_vs_knn.json" --arms=$arms --positions=0-15 \
        --out=results/tree_vs_knn \
        --title='Decision trees (d = 5, depth 4): score vs 3-NN by step'
    fi
    if [ "$only" = all ] || [ "$only" = mlp ]; then
    # 8. 2-layer ReLU MLPs: against the GD-trained MLP (the paper's 1,000 Adam steps, one point per step)
    python evaluate.py $(finished $S/mlp_*) --all_ckpts=True --out=results/mlp
    python results/seeds.py "$S/mlp_*/eval_relu2nn_regression.json" --arms=mlp_gpt2,mlp_llama,mlp_mamba \
        --positions=0-15 --out=results/mlp_vs_gdmlp \
        --title='2-layer ReLU MLPs (d = 5): score vs the GD-trained MLP by step'
    fi
    if [ "$only" = all ] || [ "$only" = rest ]; then
    # experiment 9's runs: the architectures experiment 1 did not train, on its linear regression
    local linear2
    linear2=$(printf " $S/linear_%s" gpt2_rope gpt2_swiglu gpt2_rms_swiglu gpt2_rms_rope gpt2_rope_swiglu \
        llama_mamba_pos llama_mamba_ffn)
    # the parameter counts of every run of the study, and part 2's training times (from the runs' logs)
    python - > results/study_params.txt <<'PY'
import glob, os, sweep, tasks, train
from model import ICLModel
# the paper's presets (configs/<arch>.py at their own size, E = 256, 12 blocks), then the study's runs
presets = [p for p in sorted(glob.glob('configs/*.py')) if os.path.basename(p)[:-3] not in tasks.TASKS]
runs = {os.path.basename(r['dir']): r['cfg'] for spec in sorted(glob.glob('configs/study/*.py'))
        for r in sweep.plan(sweep.load_spec([spec]))}
configs = [(p[len('configs/'):-3], train.load_config([p])[0]) for p in presets]
print('| run | backbone params | total |\n|---|---|---|')
for name, cfg in configs + [(f'study/{name}', runs[name]) for name in sorted(runs)]:
    counts = ICLModel(train.validate(cfg)).param_counts()
    print(f"| {name} | {counts['backbone']:,} | {counts['total']:,} |")
PY
    # per run: its last held-out loss and the 'done at step' line(s) of its log (with the training time)
    times $(finished $S/{sparse,tree,mlp}_* $linear2) > results/part2_times.txt
    # 9. every architecture once: experiment 9's runs scored on linear regression
    arms=$(finished $linear2)
    if [ -n "$arms" ]; then
        python evaluate.py $arms --out=results/linear_part2
    fi
    fi
}
if [ "${1:-}" = part2 ]; then
    if [ "${2:-}" != eval ]; then
        train sparse tree mlp linear_part2   # in the order RESULTS.md part 2 needs them most
    fi
    part2_eval "${3:-all}"
    exit
fi
if [ "${1:-}" = verdicts ]; then
    # every comparison RESULTS.md parts 1-2 make, from the scores results/ keeps, by one rule (verdicts.py)
    {
        v() { python results/verdicts.py "$@"; echo; }
        # (1-3, 5, 9: one seed per model, so no comparison there has a verdict)
        # 4. the ablation: the reference's doubling, 2 seeds per arm
        v results/ablation.csv --compare=ablation_quirks-ablation_clean
        # 6. sparse linear vs the Lasso at step 6,000 (the transformers' last), and at 4,000 (Mamba and 2.3's)
        a=sparse_gpt2,sparse_gpt2_rms,sparse_gpt2_rms_quirks,sparse_gpt2_rms_swiglu
        c=sparse_gpt2_rms_quirks-sparse_gpt2_rms,sparse_gpt2_rms_swiglu_quirks-sparse_gpt2_rms_swiglu
        c=$c,sparse_gpt2_rms_swiglu_quirks-sparse_gpt2_rms_quirks,sparse_gpt2_rms-sparse_gpt2
        c=$c,sparse_gpt2_rms_swiglu-sparse_gpt2,sparse_llama-sparse_gpt2
        a=$a,sparse_gpt2_rms_swiglu_quirks,sparse_llama
        v results/sparse_vs_lasso_by_step.csv --step=6000 --arms=$a --compare=$c
        v results/sparse_vs_lasso_by_step.csv --step=4000
        # 6, Fig. 4b: trained on sparse linear, scored on plain linear (vs least squares)
        v results/sparse_on_linear_by_step.csv --step=6000 \
            --arms=sparse_gpt2_rms_swiglu,sparse_gpt2_rms,sparse_llama,sparse_gpt2 \
            --compare=sparse_gpt2_rms_swiglu-sparse_gpt2_rms,sparse_gpt2_rms_swiglu-sparse_llama
        # 7. trees vs the trained GPT-2 (seed 1337, which is also in GPT-2's own mean: part 3 replaces it)
        c=tree_gpt2_rms-tree_gpt2,tree_gpt2_rms_quirks-tree_gpt2_rms,tree_mamba-tree_gpt2
        v results/tree_vs_gpt2_by_step.csv --compare=$c,tree_llama_mamba_pos-tree_gpt2
        # 8. MLPs vs the GD-trained MLP; the paper's claim is a score above 1 (1.13)
        v results/mlp_vs_gdmlp_by_step.csv --step=3000 --constant=1
    } > results/part12_verdicts.txt
    exit
fi
if [ "${1:-}" = part3 ]; then
    # the tree experiments first (the cheapest), sparse linear, the Mamba inits, the ablation's parts
    part3=(tree_init tree_level sparse_init mamba_init tree26 ablation_parts parity_d6)
    if [ -n "${3:-}" ]; then  # part3 eval EXPERIMENT: that one's table only
        part3=("$3")
    fi
    if [ "${2:-}" != eval ]; then
        train tree_init tree_level sparse_init mamba_init tree26 ablation_parts parity_d6
    fi
    for experiment in "${part3[@]}"; do  # each spec's table: per-arm scores, comparisons, verdicts
        # the evaluation's printed output, its table, figure and comparisons, and the runs' training times
        python sweep.py "configs/study/$experiment.py" --eval-only \
            | tee "results/part3_${experiment}_output.txt"
        for f in table.md table.csv compare.csv table.png; do
            cp "$S/sweeps/$experiment/$f" "results/part3_${experiment}_$f"
        done
        runs=$(python sweep.py "configs/study/$experiment.py" --dry-run | sed -n 's/^\(out\/[^ ]*\) (.*/\1/p')
        times $(finished $runs) > "results/part3_${experiment}_times.txt"
        # every run's resolved train.py config, next to its result
        python -c 'import json, sys, sweep
runs = sweep.plan(sweep.load_spec([sys.argv[1]]))
print(json.dumps({r["dir"]: r["cfg"] for r in runs}, indent=1, sort_keys=True))' \
            "configs/study/$experiment.py" > "results/part3_${experiment}_configs.json"
        if [ "$experiment" = sparse_init ]; then
            # Figs. 4a/4b on every arm that ran: the error by context length next to the exact Bayes posterior
            # mean, the tuned Lasso and least squares (4a), and on plain linear regression (4b)
            vs_bayes=eval_sparse_linear_regression_vs_sparse_linear_bayes.json
            python results/seeds.py "$S/sparse_gpt2*/$vs_bayes" --positions=0-10 \
                --out=results/part3_sparse_fig4a \
                --title='Sparse linear (d = 8, k = 2): score vs the Bayes posterior mean by step'
            python results/seeds.py "$S/sparse_gpt2*/eval_linear_regression.json" --positions=0-10 \
                --out=results/part3_sparse_fig4b --title='Trained on sparse linear, scored on plain linear'
        fi
        if [ "$experiment" = parity_d6 ]; then
            # when each seed left the prior's plateau: every checkpoint's score (_by_step.csv) and the curves
            python results/seeds.py "$S/parity_d6_*_s[0-9]*/eval_sparse_parity_vs_parity_bayes.json" \
                --out=results/part3_parity_d6_seeds --title='Sparse parity (d = 6, k = 2): score by step'
        fi
    done
    exit
fi
if [ "${1:-}" = followups ]; then
    # 2: GPT-2, Llama and Mamba on the easier d = 6 parity for 12,000 steps; 3: Llama on MQAR for 3,000 steps
    train followups
    python evaluate.py $S/mqar_llama_long --all_ckpts=True
    # scored against the Bayes-optimal learner
    python evaluate.py $S/parity_d6_{gpt2,llama,mamba} --all_ckpts=True --out=results/parity_d6
    score_by_step 'Sparse parity, d = 6, k = 2: score by step' \
        'ICL score vs the Bayes-optimal learner (95% CI)' results/parity_d6_score_vs_step.png \
        $S/parity_d6_*/eval_sparse_parity.json
    exit
fi
if [ "${1:-}" != eval ]; then
    train linear parity mqar ablation
fi

# 2, the paper's protocol: parity scored against the trained Mamba (printed only: the table run below
# rewrites the JSON)
python evaluate.py $S/parity_{gpt2,llama,llama_mamba} --baseline_run=$S/parity_mamba --plot=False
# 1-3 and 5: one Table-3-style score table of every experiment, and one figure per task with every run's
# error curve. Sparse parity is scored against the Bayes-optimal predictor here (RESULTS.md says why), MQAR
# against the retrieval dict
L1=$(printf " $S/linear_%s" gpt2 gpt2_rms llama mamba llama_mamba mambaformer)  # experiment 1's six
python evaluate.py $L1 $S/parity_{gpt2,llama,mamba,llama_mamba} $S/mqar_{gpt2,llama,mamba,llama_mamba} \
    --out=results/table
# 1: the equal-steps view (every checkpoint of the linear runs: transformers 5000 steps, Mamba family 2000)
python evaluate.py $L1 --all_ckpts=True --plot=False
score_by_step 'Linear regression, d = 5: score by step' 'ICL score vs least squares (95% CI)' \
    results/linear_score_vs_step.png $(printf " %s/eval_linear_regression.json" $L1)
# 4: the ablation, its own table
python evaluate.py $S/ablation_* --out=results/ablation
# 2: what a context-free predictor scores on sparse parity: here (d = 10, 40 points), at the paper's 140
# points, and d = 6
python - <<'PY'
import torch, tasks, baselines, evaluate
for d, n in ((10, 40), (10, 140), (6, 30)):  # k = 2; 6400 prompts; score vs the Bayes-optimal ICL predictor
    xs, ys = tasks.sample('sparse_parity', 6400, n, d, torch.Generator().manual_seed(0))
    err = {k: (baselines.BASELINES[k](xs, ys) - ys).pow(2).mean(-1)
           for k in ('zero', 'parity_bayes', 'parity_prior')}
    s = evaluate.score(err['parity_prior'], err['zero'], err['parity_bayes'])
    print(f"parity_prior at d = {d}, {n} points: score {s['score']:.4f} ± {1.96 * s['se']:.4f} "
          f"vs parity_bayes")
PY
