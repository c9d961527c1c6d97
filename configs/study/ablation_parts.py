# CPU-scale study part 3, experiment 16 (RESULTS.md section 16): experiment 4's ablation compared the clean
# llama_mamba with reference_quirks=True, which changes the init and the residual doubling together. Here
# the two are separated: the doubling alone, the reference init alone (its parts position, residual_scale,
# torch_init: model.py QUIRK_PARTS), and both (= True), against the clean model. Seeds 1337-1339 first; every
# comparison was undecided at 3, so by the verdict rule two more seeds (1340, 1341) were added to every arm.
# Settings as experiment 4 (configs/study/ablation.py), through the fused CPU scan (that one kept the torch
# scan its runs used), and every 250 steps kept for the trend.
# Trained by `bash results/study.sh part3`; alone: python sweep.py configs/study/ablation_parts.py
configs = ['configs/llama_mamba.py']
arms = dict(
    clean=dict(),
    doubling=dict(reference_quirks='doubling'),
    init=dict(reference_quirks='position,residual_scale,torch_init'),
    quirks=dict(reference_quirks=True),
)
seeds = [1337, 1338, 1339, 1340, 1341]
overrides = dict(
    n_layer=4, n_embd=64, n_head=4,               # E = 64, 4 blocks, 4 heads (paper: 256, 12, 8)
    task='linear_regression', n_dims=5, n_points=11, curriculum=False,  # d = 5, 2d + 1 points (paper: 20, 41)
    learning_rate=1e-3, batch_size=64, max_iters=1000,   # Adam, constant lr (paper 1e-4 at full size)
    mamba_init='gpt2', ckpt_interval=250, keep_every=250,
)
run_dir = 'out/study/ablation_parts_{arm}_s{seed}'
out = 'out/study/sweeps/ablation_parts'
evaluate = dict(all_ckpts=True)
compare = [('doubling', 'clean'), ('init', 'clean'), ('quirks', 'clean'), ('quirks', 'init')]
