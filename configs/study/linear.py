# CPU-scale study, experiment 1 (RESULTS.md section 1): linear regression across six architectures at
# one small size, one seed each. Trained by `bash results/study.sh`; alone:
# python sweep.py configs/study/linear.py
# Each arm is a paper preset (configs/<arch>.py: its switches) at the study's size (overrides, below).
arms = dict(
    gpt2=dict(configs='configs/gpt2.py'),
    gpt2_rms=dict(configs='configs/gpt2_rms.py'),
    llama=dict(configs='configs/llama.py'),
    # the Mamba family: 2,000 steps (a step cost 7-8 GPT-2 steps with the torch scan these runs used; they
    # keep it, so they rerun bit for bit)
    mamba=dict(configs='configs/mamba.py', max_iters=2000, scan_backend='torch'),
    llama_mamba=dict(configs='configs/llama_mamba.py', max_iters=2000, scan_backend='torch'),
    # 8 blocks 'AM' (4 attention + 4 Mamba) and the leading Mamba: Park counts 2 mixers per GPT-2 layer
    mambaformer=dict(configs='configs/mambaformer.py', n_layer=8, max_iters=2000, scan_backend='torch'),
)
overrides = dict(
    mamba_init='gpt2',                            # the Mamba init these runs trained with (then the default)
    n_layer=4, n_embd=64, n_head=4,               # E = 64, 4 blocks, 4 heads (paper: 256, 12, 8)
    task='linear_regression', n_dims=5, n_points=11, curriculum=False,  # d = 5, 2d + 1 points (paper: 20, 41)
    learning_rate=1e-3, batch_size=64, max_iters=5000,   # Adam, constant lr (paper 1e-4 at full size)
    keep_every=1000,                              # ckpt_1000.pt, ckpt_2000.pt, ...: the equal-steps view
)
run_dir = 'out/study/linear_{arm}'               # each run: seed 1337, train.py's
out = 'out/study/sweeps/linear'
