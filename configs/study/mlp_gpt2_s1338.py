# CPU-scale study, experiment 8: 2-layer ReLU MLP
# Reproduce: python train.py configs/study/mlp_gpt2_s1338.py   (RESULTS.md)
# architecture switches as in configs/gpt2.py (paper id 1); the size is the study's (below)
arch = 'gpt2'
norm = 'layernorm'
pos = 'learned'
attn = 'gpt2'
ffn = 'gelu'
mamba_embed = False
layer_pattern = 'A'
expand = 4
# task: random 2-layer ReLU MLPs (width 100, unnormalised as the paper) on d = 5 instead of 20,
# 16 points instead of 101, no curriculum
task = 'relu2nn_regression'
n_dims = 5
n_points = 16
mlp_hidden = 100
mlp_normalize = False
curriculum = False
# model: E = 64, 4 blocks, 4 heads (paper: E = 256, 12 blocks, 8 heads)
n_layer = 4
n_embd = 64
n_head = 4
# optimizer: Adam, constant lr 1e-3 (paper 1e-4 at full size), batch 64 as the paper
learning_rate = 1e-3
batch_size = 64
max_iters = 3000
seed = 1338
ckpt_interval = 500
keep_every = 1000        # ckpt_1000.pt, ckpt_2000.pt, ...: the score-by-step figures
eval_interval = 250
log_interval = 50
out_dir = 'out/study/mlp_gpt2_s1338'
