# CPU-scale study, experiment 1: linear regression across architectures at one small size
# Reproduce: python train.py configs/study/linear_mambaformer.py   (RESULTS.md)
# architecture switches as in configs/mambaformer.py; the size is the study's (below)
arch = 'mambaformer'
norm = 'layernorm'
pos = 'none'
attn = 'gpt2'
ffn = 'none'
mamba_embed = True
layer_pattern = 'AM'
expand = 2
# task: linear regression shrunk from d = 20 / 41 points to d = 5 / 11 points (2d + 1), no curriculum
task = 'linear_regression'
n_dims = 5
n_points = 11
curriculum = False
# model: E = 64, 4 blocks, 4 heads (paper: E = 256, 12 blocks, 8 heads)
# MambaFormer: 8 blocks 'AM' (4 attention + 4 Mamba) plus the leading Mamba: Park counts 2 mixers per
# GPT-2 layer
n_layer = 8
n_embd = 64
n_head = 4
# optimizer: Adam, constant lr 1e-3 (paper 1e-4 at full size), batch 64 as the paper
learning_rate = 1e-3
batch_size = 64
max_iters = 2000
seed = 1337
ckpt_interval = 500
keep_every = 1000        # ckpt_1000.pt, ckpt_2000.pt, ...: the equal-steps comparison in RESULTS.md
eval_interval = 250
log_interval = 50
out_dir = 'out/study/linear_mambaformer'
# trained before the fused CPU scan existed: the torch backend reruns it bit for bit
scan_backend = 'torch'
