# CPU-scale study part 3, experiment 15 (RESULTS.md section 15): the init decomposition of experiment 12
# (configs/study/tree_init.py) on sparse linear regression, where the paper's GPT-2 RMS and RMS SwiGLU fail.
# Setting as experiment 6 (configs/study/sparse.py; its gpt2, gpt2_rms, gpt2_rms_quirks runs are these).
# Scored against the exact Bayes posterior mean (baselines.sparse_linear_bayes), which no seed moves.
# Trained by `bash results/study.sh part3`; alone: python sweep.py configs/study/sparse_init.py
seeds = [1337, 1338, 1339]
arms = dict(
    gpt2=dict(configs='configs/gpt2.py'),
    gpt2_quirks=dict(configs='configs/gpt2.py', reference_quirks='position,residual_scale'),
    gpt2_rms=dict(configs='configs/gpt2_rms.py'),
    gpt2_rms_quirks=dict(configs='configs/gpt2_rms.py', reference_quirks=True),
    gpt2_rms_position=dict(configs='configs/gpt2_rms.py', reference_quirks='position'),
    gpt2_rms_residual=dict(configs='configs/gpt2_rms.py', reference_quirks='residual_scale'),
    # GPT-2 RMS SwiGLU (1.4), the paper's Fig. 4 arm, clean and with the reference init (the one that fails)
    gpt2_rms_swiglu=dict(configs='configs/gpt2_rms_swiglu.py'),
    gpt2_rms_swiglu_quirks=dict(configs='configs/gpt2_rms_swiglu.py', reference_quirks=True),
)
overrides = dict(
    n_layer=4, n_embd=64, n_head=4,               # E = 64, 4 blocks, 4 heads (paper: 256, 12, 8)
    task='sparse_linear_regression', n_dims=8, n_points=17, sparsity=2, curriculum=True,
    curriculum_dims_start=5, curriculum_dims_inc=1, curriculum_points_start=11, curriculum_points_inc=2,
    curriculum_interval=1000,
    learning_rate=1e-3, batch_size=64, max_iters=6000,   # Adam, constant lr (paper 1e-4 at full size)
    keep_every=1000,
)
run_dir = 'out/study/sparse_{arm}_s{seed}'
out = 'out/study/sweeps/sparse_init'
evaluate = [dict(score_vs='sparse_linear_bayes', baselines='sparse_linear_bayes,lasso_tuned,least_squares',
                 all_ckpts=True),                 # the table's score
            dict(score_vs='lasso', plot=False),   # the paper's baseline (alpha 1e-3, untuned), secondary
            dict(score_vs='least_squares', all_ckpts=True, plot=False),  # Fig. 4a: which scheme it follows
            dict(task='linear_regression', all_ckpts=True, plot=False)]  # Fig. 4b: on plain linear
compare = [('gpt2_quirks', 'gpt2'), ('gpt2_rms_quirks', 'gpt2_rms'), ('gpt2_rms_position', 'gpt2_rms'),
           ('gpt2_rms_residual', 'gpt2_rms'), ('gpt2_rms', 'gpt2'),
           ('gpt2_rms_swiglu_quirks', 'gpt2_rms_swiglu'),
           # added after the 2-seed pilot had been read (post hoc, as in tree_init.py): is the position
           # table alone as large as the whole reference init on this task too?
           ('gpt2_rms_position', 'gpt2_rms_quirks')]
