# CPU-scale study, experiment 3: vector MQAR at the paper's small size
# Reproduce: python train.py configs/study/mqar_gpt2.py   (RESULTS.md)
# architecture switches as in configs/gpt2.py; the size is the study's (below)
arch = 'gpt2'
norm = 'layernorm'
pos = 'learned'
attn = 'gpt2'
ffn = 'gelu'
mamba_embed = False
layer_pattern = 'A'
expand = 4
# task: vector MQAR as the paper's code (keys and values on the sphere of radius sqrt(20), d = 20, one
# query, loss on the query only) with 16 key-value pairs instead of 64: n_points = 17 = 16 pairs + the
# query (34 tokens, paper 130)
task = 'mqar'
n_dims = 20
n_points = 17
curriculum = False
# model: the paper's own MQAR size, E = 128, 2 blocks, 8 heads
n_layer = 2
n_embd = 128
n_head = 8
# optimizer: Adam, constant lr 1e-3 (paper 2e-4), batch 64
learning_rate = 1e-3
batch_size = 64
max_iters = 1200
seed = 1337
ckpt_interval = 500
keep_every = 500
eval_interval = 250
log_interval = 50
out_dir = 'out/study/mqar_gpt2'
