# CPU-scale study, experiment 7 (RESULTS.md section 7): decision trees, scored against the trained GPT-2 (seed
# 1337) as the paper. The arms the paper's claims compare have 3 seeds, the others one.
# Trained by `bash results/study.sh part2`; alone: python sweep.py configs/study/tree.py
_three = [1337, 1338, 1339]
arms = dict(
    gpt2=dict(configs='configs/gpt2.py', seeds=_three),
    gpt2_rms=dict(configs='configs/gpt2_rms.py', seeds=_three),
    gpt2_rms_quirks=dict(configs='configs/gpt2_rms.py', reference_quirks=True, seeds=_three),
    mamba=dict(configs='configs/mamba.py', seeds=_three),
    llama_mamba_pos=dict(configs='configs/llama_mamba_pos.py', seeds=_three),
    llama=dict(configs='configs/llama.py'),
    mamba_quirks=dict(configs='configs/mamba.py', reference_quirks=True),  # HF's Mamba init, as the reference
)
seeds = [1337]
overrides = dict(
    mamba_init='gpt2',                            # the Mamba init these runs trained with (then the default)
    n_layer=4, n_embd=64, n_head=4,               # E = 64, 4 blocks, 4 heads (paper: 256, 12, 8)
    task='decision_tree', n_dims=5, n_points=16, tree_depth=4, curriculum=False,  # paper: d = 20, 101 points
    learning_rate=1e-3, batch_size=64, max_iters=3000,   # Adam, constant lr (paper 1e-4 at full size)
    keep_every=1000,
)
run_dir = 'out/study/tree_{arm}_s{seed}'
out = 'out/study/sweeps/tree'
evaluate = dict(baseline_run='out/study/tree_gpt2_s1337')
