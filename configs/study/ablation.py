# CPU-scale study, experiment 4 (RESULTS.md section 4): llama_mamba with and without the reference package's
# residual doubling (x <- 2x + mamba(norm(x)) in every Mamba block) and its init, 2 seeds each.
# Trained by `bash results/study.sh`; alone: python sweep.py configs/study/ablation.py
configs = ['configs/llama_mamba.py']
arms = dict(
    clean=dict(),
    quirks=dict(reference_quirks=True),           # docs/paper.md §3.4
)
seeds = [1337, 1338]
overrides = dict(
    mamba_init='gpt2',                            # the Mamba init these runs trained with (then the default)
    n_layer=4, n_embd=64, n_head=4,               # E = 64, 4 blocks, 4 heads (paper: 256, 12, 8)
    task='linear_regression', n_dims=5, n_points=11, curriculum=False,  # d = 5, 2d + 1 points (paper: 20, 41)
    learning_rate=1e-3, batch_size=64, max_iters=1000,   # Adam, constant lr (paper 1e-4 at full size)
    scan_backend='torch',                         # (the scan these runs used: they rerun bit for bit)
)
run_dir = 'out/study/ablation_{arm}_s{seed}'
out = 'out/study/sweeps/ablation'
reference = 'clean'
