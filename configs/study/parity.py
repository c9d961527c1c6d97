# CPU-scale study, experiment 2 (RESULTS.md section 2): sparse parity, d = 10, k = 2, one seed each.
# Trained by `bash results/study.sh`; alone: python sweep.py configs/study/parity.py
arms = dict(
    gpt2=dict(configs='configs/gpt2.py'),
    llama=dict(configs='configs/llama.py'),
    mamba=dict(configs='configs/mamba.py', scan_backend='torch'),        # (the scan these runs used)
    llama_mamba=dict(configs='configs/llama_mamba.py', scan_backend='torch'),
)
overrides = dict(
    mamba_init='gpt2',                            # the Mamba init these runs trained with (then the default)
    n_layer=2, n_embd=32, n_head=4,               # E = 32, 2 blocks, 4 heads (paper: 256, 12, 8)
    # x uniform on {-1,+1}^10, y = the product of a hidden 2-subset, MSE on every position, no curriculum;
    # 40 points instead of 140
    task='sparse_parity', n_dims=10, n_points=40, parity_k=2, curriculum=False,
    learning_rate=1e-3, batch_size=64, max_iters=1500,   # Adam, constant lr (paper 4e-4, 200k steps)
    keep_every=500, eval_interval=100, log_interval=100,
)
run_dir = 'out/study/parity_{arm}'
out = 'out/study/sweeps/parity'
evaluate = dict(score_vs='parity_bayes')          # vs the Bayes-optimal learner (RESULTS.md section 2: why)
