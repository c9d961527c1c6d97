# CPU-scale study part 3, experiment 18 (RESULTS.md section 18): the Mamba-vs-GPT-2 verdict on decision trees
# at a second setting, longer prompts: 26 points instead of 16 (a verdict from one prompt length is a verdict
# about that length). GPT-2 and Mamba with each init, at the same 3,000 steps (the trend column says whether
# an arm was still rising there). Otherwise as experiment 13 (configs/study/tree_level.py). Scored against the
# exact Bayes posterior mean. Trained by `bash results/study.sh part3`; alone: python sweep.py
# configs/study/tree26.py
seeds = [1337, 1338, 1339]
arms = dict(
    gpt2=dict(configs='configs/gpt2.py'),
    mamba=dict(configs='configs/mamba.py', mamba_init='gpt2'),
    mamba_hf=dict(configs='configs/mamba.py', mamba_init='mamba'),
)
overrides = dict(
    n_layer=4, n_embd=64, n_head=4,               # E = 64, 4 blocks, 4 heads (paper: 256, 12, 8)
    task='decision_tree', n_dims=5, n_points=26, tree_depth=4, curriculum=False,  # paper: d = 20, 101 points
    learning_rate=1e-3, batch_size=64, max_iters=3000,   # Adam, constant lr (paper 1e-4 at full size)
    keep_every=1000,
)
run_dir = 'out/study/tree26_{arm}_s{seed}'
out = 'out/study/sweeps/tree26'
evaluate = dict(score_vs='tree_bayes', baselines='tree_bayes', all_ckpts=True)
compare = [('mamba', 'gpt2'), ('mamba_hf', 'gpt2'), ('mamba_hf', 'mamba')]
