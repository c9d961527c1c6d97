# CPU-scale study, experiment 6 (RESULTS.md section 6): sparse linear regression, least squares or the Lasso?
# The arms the paper's claims compare have 3 seeds, the others one.
# Trained by `bash results/study.sh part2`; alone: python sweep.py configs/study/sparse.py
_three = [1337, 1338, 1339]
arms = dict(
    gpt2=dict(configs='configs/gpt2.py', seeds=_three),
    gpt2_rms=dict(configs='configs/gpt2_rms.py', seeds=_three),
    gpt2_rms_quirks=dict(configs='configs/gpt2_rms.py', reference_quirks=True, seeds=_three),
    gpt2_rms_swiglu=dict(configs='configs/gpt2_rms_swiglu.py', seeds=_three),
    gpt2_rms_swiglu_quirks=dict(configs='configs/gpt2_rms_swiglu.py', reference_quirks=True, seeds=_three),
    llama=dict(configs='configs/llama.py', seeds=_three),
    gpt2_swiglu=dict(configs='configs/gpt2_swiglu.py'),
    gpt2_rope=dict(configs='configs/gpt2_rope.py'),
    gpt2_rms_rope=dict(configs='configs/gpt2_rms_rope.py'),
    gpt2_rope_swiglu=dict(configs='configs/gpt2_rope_swiglu.py'),
    llama_mamba=dict(configs='configs/llama_mamba.py', max_iters=4000),   # (CPU budget: 4,000 steps)
    mamba=dict(configs='configs/mamba.py', max_iters=4000),
)
seeds = [1337]
overrides = dict(
    mamba_init='gpt2',                            # the Mamba init these runs trained with (then the default)
    n_layer=4, n_embd=64, n_head=4,               # E = 64, 4 blocks, 4 heads (paper: 256, 12, 8)
    # d = 8, k = 2, 17 points (2d + 1; paper: 20, 3, 41), Garg's curriculum shrunk alike: d 5 -> 8 and
    # points 11 -> 17 every 1,000 steps (full size at 3,000)
    task='sparse_linear_regression', n_dims=8, n_points=17, sparsity=2, curriculum=True,
    curriculum_dims_start=5, curriculum_dims_inc=1, curriculum_points_start=11, curriculum_points_inc=2,
    curriculum_interval=1000,
    learning_rate=1e-3, batch_size=64, max_iters=6000,   # Adam, constant lr (paper 1e-4 at full size)
    keep_every=1000,                              # ckpt_1000.pt, ...: the score-by-step figures
)
run_dir = 'out/study/sparse_{arm}_s{seed}'
out = 'out/study/sweeps/sparse'
