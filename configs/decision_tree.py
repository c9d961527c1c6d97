# Decision tree regression (paper Table 1): depth-4 trees, splits on uniform coordinates of all 20 dims,
# N(0, 1) leaves. Long curriculum as relu2nn_regression.
task = 'decision_tree'
n_dims = 20
n_points = 101
curriculum = True
curriculum_dims_start = 5
curriculum_dims_inc = 1
curriculum_points_start = 26
curriculum_points_inc = 5
curriculum_interval = 2000
learning_rate = 1e-4
batch_size = 64
max_iters = 500000
ckpt_interval = 1000
keep_every = 50000
eval_interval = 1000
log_interval = 100
tree_depth = 4
