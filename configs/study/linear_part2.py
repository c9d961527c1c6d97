# CPU-scale study, experiment 9 (RESULTS.md section 9): the architectures experiment 1 did not train, on its
# linear regression, one seed each: with linear.py every preset is trained once.
# Trained by `bash results/study.sh part2`; alone: python sweep.py configs/study/linear_part2.py
arms = dict(
    gpt2_rope=dict(configs='configs/gpt2_rope.py'),
    gpt2_swiglu=dict(configs='configs/gpt2_swiglu.py'),
    gpt2_rms_swiglu=dict(configs='configs/gpt2_rms_swiglu.py'),
    gpt2_rms_rope=dict(configs='configs/gpt2_rms_rope.py'),
    gpt2_rope_swiglu=dict(configs='configs/gpt2_rope_swiglu.py'),
    llama_mamba_pos=dict(configs='configs/llama_mamba_pos.py'),
    llama_mamba_ffn=dict(configs='configs/llama_mamba_ffn.py'),
)
overrides = dict(
    mamba_init='gpt2',                            # the Mamba init these runs trained with (then the default)
    n_layer=4, n_embd=64, n_head=4,               # E = 64, 4 blocks, 4 heads (paper: 256, 12, 8)
    task='linear_regression', n_dims=5, n_points=11, curriculum=False,  # d = 5, 2d + 1 points (paper: 20, 41)
    learning_rate=1e-3, batch_size=64, max_iters=5000,   # Adam, constant lr (paper 1e-4 at full size)
    keep_every=1000,
)
run_dir = 'out/study/linear_{arm}'
out = 'out/study/sweeps/linear_part2'
