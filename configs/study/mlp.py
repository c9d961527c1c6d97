# CPU-scale study, experiment 8 (RESULTS.md section 8): 2-layer ReLU MLPs (width 100, unnormalised targets
# as the paper), scored against the GD-trained MLP. Trained by `bash results/study.sh part2`; alone:
# python sweep.py configs/study/mlp.py
arms = dict(
    gpt2=dict(configs='configs/gpt2.py', seeds=[1337, 1338, 1339]),
    llama=dict(configs='configs/llama.py'),
    mamba=dict(configs='configs/mamba.py'),
)
seeds = [1337]
overrides = dict(
    mamba_init='gpt2',                            # the Mamba init these runs trained with (then the default)
    n_layer=4, n_embd=64, n_head=4,               # E = 64, 4 blocks, 4 heads (paper: 256, 12, 8)
    task='relu2nn_regression', n_dims=5, n_points=16, mlp_hidden=100, mlp_normalize=False, curriculum=False,
    learning_rate=1e-3, batch_size=64, max_iters=3000,   # Adam, constant lr (paper 1e-4 at full size)
    keep_every=1000,
)
run_dir = 'out/study/mlp_{arm}_s{seed}'
out = 'out/study/sweeps/mlp'
