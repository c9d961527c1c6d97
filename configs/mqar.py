# Vector MQAR (paper Table 1, code: 64 key-value pairs + 1 query): keys and values on the sphere of
# radius sqrt(20), loss on the query only. The paper shrinks every model for it: E = 128, 2 blocks,
# 8 heads, Adam 2e-4. Give the architecture config FIRST so these sizes win.
task = 'mqar'
n_dims = 20
n_points = 65
curriculum = False
n_layer = 2
n_embd = 128
n_head = 8
learning_rate = 2e-4
batch_size = 64
max_iters = 500000
ckpt_interval = 1000
keep_every = 50000
eval_interval = 1000
log_interval = 100
