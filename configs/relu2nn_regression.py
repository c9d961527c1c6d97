# 2-layer ReLU MLP regression (paper Table 1): y = W2 relu(W1 x), hidden 100, N(0, 1) weights, NOT
# normalised (the paper; Var y ~ 1000 at d = 20; mlp_normalize = True gives Garg's sqrt(2/100)).
# Long curriculum: points 26 -> 101 (+5) every 2000 steps; dims 5 -> 20.
task = 'relu2nn_regression'
n_dims = 20
n_points = 101
curriculum = True
curriculum_dims_start = 5
curriculum_dims_inc = 1
curriculum_points_start = 26
curriculum_points_inc = 5
curriculum_interval = 2000
mlp_hidden = 100
mlp_normalize = False
learning_rate = 1e-4
batch_size = 64
max_iters = 500000
ckpt_interval = 1000
keep_every = 50000
eval_interval = 1000
log_interval = 100
