# CPU-scale study, experiment 4 (ablation): llama_mamba with and without the reference's residual
# doubling, 2 seeds each
# Reproduce: python train.py configs/study/ablation_clean_s1338.py   (RESULTS.md)
# architecture switches as in configs/llama_mamba.py; the size is the study's (below)
arch = 'llama_mamba'
norm = 'rmsnorm'
pos = 'none'
attn = 'llama'
ffn = 'mamba'
mamba_embed = True
layer_pattern = 'A'
expand = 4
# task: linear regression shrunk from d = 20 / 41 points to d = 5 / 11 points (2d + 1), no curriculum
task = 'linear_regression'
n_dims = 5
n_points = 11
curriculum = False
# model: E = 64, 4 blocks, 4 heads (paper: E = 256, 12 blocks, 8 heads)
n_layer = 4
n_embd = 64
n_head = 4
# optimizer: Adam, constant lr 1e-3 (paper 1e-4 at full size), batch 64 as the paper
learning_rate = 1e-3
batch_size = 64
max_iters = 1000
seed = 1338
ckpt_interval = 500
keep_every = 0
eval_interval = 250
log_interval = 50
# the ablation: the reference package's residual doubling (x <- 2x + mamba(norm(x)) in every Mamba
# block) and its init
reference_quirks = False
out_dir = 'out/study/ablation_clean_s1338'
# trained before the fused CPU scan existed: the torch backend reruns it bit for bit
scan_backend = 'torch'
