# CPU-scale study part 3, experiment 13 (RESULTS.md section 13): is Mamba level with GPT-2 on decision trees
# (the paper: Mamba 0.832, suboptimal), and which Mamba init: 'gpt2' (N(0, 0.02) linears,
# this project's rule until part 3) or 'mamba' (mamba_ssm's and HF's: PyTorch-default linears, the dt init,
# out_proj / sqrt(n_layer); what the paper trained pure Mamba with). The hybrid 2.3 (llama_mamba) with each
# init. Scored against the exact Bayes posterior mean (baselines.tree_bayes). Seeds: GPT-2, GPT-2 RMS and
# both Mamba arms 5 (the Mamba arms' seeds 1340-1341 were trained in a later session than 1337-1339, by the
# same command), the hybrid 3.
# Setting as experiment 7 (configs/study/tree.py); the gpt2 and gpt2_rms runs of seeds 1337-1339 are
# tree_init.py's. Trained by `bash results/study.sh part3`; alone: python sweep.py configs/study/tree_level.py
_three = [1337, 1338, 1339]
seeds = [1337, 1338, 1339, 1340, 1341]
arms = dict(
    gpt2=dict(configs='configs/gpt2.py'),
    gpt2_rms=dict(configs='configs/gpt2_rms.py'),
    mamba=dict(configs='configs/mamba.py', mamba_init='gpt2'),
    mamba_hf=dict(configs='configs/mamba.py', mamba_init='mamba'),
    llama_mamba=dict(configs='configs/llama_mamba.py', mamba_init='gpt2', seeds=_three),
    llama_mamba_hf=dict(configs='configs/llama_mamba.py', mamba_init='mamba', seeds=_three),
    # the paper's protocol scores trees against a trained GPT-2: this seed is that baseline, in no arm's mean
    gpt2_baseline=dict(configs='configs/gpt2.py', seeds=[1336]),
)
overrides = dict(
    n_layer=4, n_embd=64, n_head=4,               # E = 64, 4 blocks, 4 heads (paper: 256, 12, 8)
    task='decision_tree', n_dims=5, n_points=16, tree_depth=4, curriculum=False,  # paper: d = 20, 101 points
    learning_rate=1e-3, batch_size=64, max_iters=3000,   # Adam, constant lr (paper 1e-4 at full size)
    keep_every=1000,
)
run_dir = 'out/study/tree_{arm}_s{seed}'
out = 'out/study/sweeps/tree_level'
evaluate = [dict(score_vs='tree_bayes', baselines='tree_bayes', all_ckpts=True),   # the table's score
            dict(baseline_run='out/study/tree_gpt2_baseline_s1336', plot=False)]  # the paper's, secondary
compare = [('mamba', 'gpt2'), ('mamba_hf', 'gpt2'), ('gpt2_rms', 'gpt2'), ('mamba_hf', 'mamba'),
           ('llama_mamba_hf', 'llama_mamba')]
