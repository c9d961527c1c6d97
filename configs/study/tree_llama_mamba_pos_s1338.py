# CPU-scale study, experiment 7: decision tree
# Reproduce: python train.py configs/study/tree_llama_mamba_pos_s1338.py   (RESULTS.md)
# architecture switches as in configs/llama_mamba_pos.py (paper id 2.1); the size is the study's (below)
arch = 'llama_mamba_pos'
norm = 'rmsnorm'
pos = 'none'
attn = 'llama'
ffn = 'swiglu'
mamba_embed = True
layer_pattern = 'A'
expand = 4
# task: decision trees of depth 4 (the paper's) on d = 5 instead of 20, 16 points instead of 101,
# no curriculum
task = 'decision_tree'
n_dims = 5
n_points = 16
tree_depth = 4
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
out_dir = 'out/study/tree_llama_mamba_pos_s1338'
