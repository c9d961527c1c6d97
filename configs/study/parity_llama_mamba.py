# CPU-scale study, experiment 2: sparse parity, d = 10, k = 2 (the paper's function class)
# Reproduce: python train.py configs/study/parity_llama_mamba.py   (RESULTS.md)
# architecture switches as in configs/llama_mamba.py; the size is the study's (below)
arch = 'llama_mamba'
norm = 'rmsnorm'
pos = 'none'
attn = 'llama'
ffn = 'mamba'
mamba_embed = True
layer_pattern = 'A'
expand = 4
# task: sparse parity as the paper (x uniform on {-1,+1}^10, y = product of a hidden 2-subset,
# MSE on every position, no curriculum) but with 40 points instead of 140 (80 tokens, paper 280)
task = 'sparse_parity'
n_dims = 10
n_points = 40
parity_k = 2
curriculum = False
# model: E = 32, 2 blocks, 4 heads (paper: E = 256, 12 blocks, 8 heads)
n_layer = 2
n_embd = 32
n_head = 4
# optimizer: Adam, constant lr 1e-3 (paper 4e-4), batch 64; paper 200k steps
learning_rate = 1e-3
batch_size = 64
max_iters = 1500
seed = 1337
ckpt_interval = 500
keep_every = 500
eval_interval = 100
log_interval = 100
out_dir = 'out/study/parity_llama_mamba'
# trained before the fused CPU scan existed: the torch backend reruns it bit for bit
scan_backend = 'torch'
