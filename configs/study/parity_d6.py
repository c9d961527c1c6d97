# CPU-scale study part 3, experiment 17 (RESULTS.md section 17): the d = 6 parity follow-up (experiment 2's
# follow-up, configs/study/followups.py) had one seed per model; here 3 seeds of GPT-2 and Mamba and one of
# the hybrid 2.3 (llama_mamba: the paper's parity claim is about hybrids), read as failure counts: a run that
# stays on the prior scores about 0.07 against the Bayes-optimal learner, below fail_below = 0.1.
# Settings as the follow-up (d = 6, k = 2, 30 points, E = 32, 2 blocks; GPT-2 24,000 steps, the Mamba family
# 12,000), through the fused CPU scan. Trained by `bash results/study.sh part3`; alone:
# python sweep.py configs/study/parity_d6.py
seeds = [1337, 1338, 1339]
arms = dict(
    gpt2=dict(configs='configs/gpt2.py', max_iters=24000, ckpt_interval=2000, keep_every=2000),
    mamba=dict(configs='configs/mamba.py', max_iters=12000),
    llama_mamba=dict(configs='configs/llama_mamba.py', max_iters=12000, seeds=[1337]),
)
overrides = dict(
    n_layer=2, n_embd=32, n_head=4, task='sparse_parity', n_dims=6, n_points=30, parity_k=2,
    curriculum=False, learning_rate=1e-3, batch_size=64, eval_interval=100, log_interval=100,
    ckpt_interval=1000, keep_every=1000, mamba_init='gpt2',
)
run_dir = 'out/study/parity_d6_{arm}_s{seed}'
out = 'out/study/sweeps/parity_d6'
evaluate = dict(score_vs='parity_bayes', all_ckpts=True)
compare = [('mamba', 'gpt2'), ('llama_mamba', 'gpt2')]
