# CPU-scale study, experiment 2, follow-up: sparse parity with d = 6 (15 possible subsets instead of 45),
# trained 24,000 steps (Mamba: 12,000)
# Reproduce: python train.py configs/study/parity_d6_gpt2.py   (RESULTS.md)
# architecture switches as in configs/gpt2.py; the size is the study's (below)
arch = 'gpt2'
norm = 'layernorm'
pos = 'learned'
attn = 'gpt2'
ffn = 'gelu'
mamba_embed = False
layer_pattern = 'A'
expand = 4
# task: sparse parity as the paper (x uniform on {-1,+1}^6, y = product of a hidden 2-subset,
# MSE on every position, no curriculum) but with 30 points instead of 140 (60 tokens, paper 280)
task = 'sparse_parity'
n_dims = 6
n_points = 30
parity_k = 2
curriculum = False
# model: E = 32, 2 blocks, 4 heads (paper: E = 256, 12 blocks, 8 heads)
n_layer = 2
n_embd = 32
n_head = 4
# optimizer: Adam, constant lr 1e-3 (paper 4e-4), batch 64; paper 200k steps
learning_rate = 1e-3
batch_size = 64
max_iters = 24000
seed = 1337
ckpt_interval = 2000
keep_every = 2000
eval_interval = 100
log_interval = 100
out_dir = 'out/study/parity_d6_gpt2'
