# CPU-scale study, experiment 9: every architecture on linear regression (experiment 1's setting)
# Reproduce: python train.py configs/study/linear_llama_mamba_ffn.py   (RESULTS.md)
# architecture switches as in configs/llama_mamba_ffn.py (paper id 2.2); the size is the study's (below)
arch = 'llama_mamba_ffn'
norm = 'rmsnorm'
pos = 'rope'
attn = 'llama'
ffn = 'mamba'
mamba_embed = False
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
max_iters = 5000
seed = 1337
ckpt_interval = 500
keep_every = 1000        # ckpt_1000.pt, ckpt_2000.pt, ...: the score-by-step figures
eval_interval = 250
log_interval = 50
out_dir = 'out/study/linear_llama_mamba_ffn'
