# CPU-scale study, experiment 6: sparse linear regression (least squares or Lasso?)
# Reproduce: python train.py configs/study/sparse_mamba_s1337.py   (RESULTS.md)
# architecture switches as in configs/mamba.py (paper id 3); the size is the study's (below)
arch = 'mamba'
norm = 'rmsnorm'
pos = 'none'
attn = 'llama'
ffn = 'none'
mamba_embed = False
layer_pattern = 'M'
expand = 4
# task: sparse linear regression shrunk from d = 20, k = 3, 41 points to d = 8, k = 2, 17 points (2d + 1),
# with Garg's curriculum shrunk alike: d 5 -> 8 and points 11 -> 17 every 1,000 steps (full size at 3,000)
task = 'sparse_linear_regression'
n_dims = 8
n_points = 17
sparsity = 2
curriculum = True
curriculum_dims_start = 5
curriculum_dims_inc = 1
curriculum_points_start = 11
curriculum_points_inc = 2
curriculum_interval = 1000
# model: E = 64, 4 blocks, 4 heads (paper: E = 256, 12 blocks, 8 heads)
n_layer = 4
n_embd = 64
n_head = 4
# optimizer: Adam, constant lr 1e-3 (paper 1e-4 at full size), batch 64 as the paper
learning_rate = 1e-3
batch_size = 64
max_iters = 4000        # the transformers get 6,000 (CPU budget); 1,000 steps at d = 8 after the curriculum
seed = 1337
ckpt_interval = 500
keep_every = 1000        # ckpt_1000.pt, ckpt_2000.pt, ...: the score-by-step figures
eval_interval = 250
log_interval = 50
out_dir = 'out/study/sparse_mamba_s1337'
