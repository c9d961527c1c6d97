# Linear regression as in the paper (Table 1): d = 20, 41 points, w ~ N(0, I), Adam 1e-4, batch 64.
# Garg's curriculum: dims 5 -> 20 (+1) and points 11 -> 41 (+2) every 2000 steps, full size at 30k.
# Give an architecture config first: python train.py configs/gpt2.py configs/linear_regression.py
task = 'linear_regression'
n_dims = 20
n_points = 41
curriculum = True
curriculum_dims_start = 5
curriculum_dims_inc = 1
curriculum_points_start = 11
curriculum_points_inc = 2
curriculum_interval = 2000
learning_rate = 1e-4
batch_size = 64
max_iters = 500000
ckpt_interval = 1000     # the resume point
keep_every = 50000       # permanent checkpoints, as the paper's trajectory plots
eval_interval = 1000
log_interval = 100
