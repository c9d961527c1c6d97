# CPU-scale study, the follow-ups of experiments 2 and 3 (RESULTS.md sections 2, 3): sparse parity with d = 6
# (15 possible subsets instead of 45) trained 12,000 steps (GPT-2 24,000), and Llama on vector MQAR for
# 3,000 steps instead of 1,200 (did it fail, or was it late?). One seed each.
# Trained by `bash results/study.sh followups`; alone: python sweep.py configs/study/followups.py
_parity = dict(                                   # parity.py's settings at d = 6 and 30 points
    n_layer=2, n_embd=32, n_head=4, task='sparse_parity', n_dims=6, n_points=30, parity_k=2,
    curriculum=False, learning_rate=1e-3, batch_size=64, eval_interval=100, log_interval=100,
    mamba_init='gpt2',                            # the Mamba init these runs trained with (then the default)
)
_mqar = dict(                                     # mqar.py's settings
    n_layer=2, n_embd=128, n_head=8, task='mqar', n_dims=20, n_points=17, curriculum=False,
    learning_rate=1e-3, batch_size=64, keep_every=500,
)
arms = dict(
    parity_d6_gpt2=dict(configs='configs/gpt2.py', **_parity, max_iters=24000, ckpt_interval=2000,
                        keep_every=2000),
    parity_d6_llama=dict(configs='configs/llama.py', **_parity, max_iters=12000, ckpt_interval=1000,
                         keep_every=1000),
    parity_d6_mamba=dict(configs='configs/mamba.py', **_parity, max_iters=12000, ckpt_interval=1000,
                         keep_every=1000, scan_backend='torch'),
    mqar_llama_long=dict(configs='configs/llama.py', **_mqar, max_iters=3000),
)
run_dir = 'out/study/{arm}'
out = 'out/study/sweeps/followups'
evaluate = dict(score_vs='parity_bayes', all_ckpts=True)  # (MQAR arms: the table's Δ is only within a task)
