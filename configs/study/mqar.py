# CPU-scale study, experiment 3 (RESULTS.md section 3): vector MQAR at the paper's own model size, one seed
# each.
# Trained by `bash results/study.sh`; alone: python sweep.py configs/study/mqar.py
arms = dict(
    gpt2=dict(configs='configs/gpt2.py'),
    llama=dict(configs='configs/llama.py'),
    mamba=dict(configs='configs/mamba.py', scan_backend='torch'),        # (the scan these runs used)
    llama_mamba=dict(configs='configs/llama_mamba.py', scan_backend='torch'),
)
overrides = dict(
    mamba_init='gpt2',                            # the Mamba init these runs trained with (then the default)
    n_layer=2, n_embd=128, n_head=8,              # the paper's MQAR size: E = 128, 2 blocks, 8 heads
    # keys and values on the sphere of radius sqrt(20), one query, the loss on the query only; 16 key-value
    # pairs instead of 64: 17 points = 16 pairs + the query (34 tokens, paper 130)
    task='mqar', n_dims=20, n_points=17, curriculum=False,
    learning_rate=1e-3, batch_size=64, max_iters=1200,   # Adam, constant lr (paper 2e-4)
    keep_every=500,
)
run_dir = 'out/study/mqar_{arm}'
out = 'out/study/sweeps/mqar'
