# Sparse parity (paper Table 1): x uniform on {-1, +1}^10, y = product of a hidden 2-subset,
# 140 points, no curriculum, MSE on all positions, Adam 4e-4. The paper trained 200k steps.
task = 'sparse_parity'
n_dims = 10
n_points = 140
curriculum = False
parity_k = 2
learning_rate = 4e-4
batch_size = 64
max_iters = 200000
ckpt_interval = 1000
keep_every = 50000
eval_interval = 1000
log_interval = 100
