# CPU-scale study part 3, experiment 12 (RESULTS.md section 12): which part of the reference package's init
# makes GPT-2 RMS fail on decision trees, with the LayerNorm control. For GPT-2 modules the reference's
# hybrid engine applies two parts (model.py QUIRK_PARTS): 'position' (the N(0, 1) position table) and
# 'residual_scale' (c_proj unscaled); torch_init and doubling touch only Llama/Mamba modules, so on GPT-2 RMS
# the reference init with the doubling reverted is True itself. Each part alone on GPT-2 RMS, both on GPT-2
# (LayerNorm: is it the norm or the init?), and True on RMS. A pure GPT-2 with reference_quirks=True is HF's
# own GPT2Model, i.e. the clean init: the control names its parts. Scored against the exact Bayes posterior
# mean (baselines.tree_bayes), which no training seed moves.
# Setting as experiment 7 (configs/study/tree.py; its gpt2, gpt2_rms and gpt2_rms_quirks runs are these).
# Trained by `bash results/study.sh part3`; alone: python sweep.py configs/study/tree_init.py
seeds = [1337, 1338, 1339]
_five = [1337, 1338, 1339, 1340, 1341]  # (added after the 3-seed table: residual_scale's part was undecided)
arms = dict(
    gpt2=dict(configs='configs/gpt2.py'),
    gpt2_quirks=dict(configs='configs/gpt2.py', reference_quirks='position,residual_scale'),
    gpt2_rms=dict(configs='configs/gpt2_rms.py', seeds=_five),
    gpt2_rms_quirks=dict(configs='configs/gpt2_rms.py', reference_quirks=True, seeds=_five),
    gpt2_rms_position=dict(configs='configs/gpt2_rms.py', reference_quirks='position', seeds=_five),
    gpt2_rms_residual=dict(configs='configs/gpt2_rms.py', reference_quirks='residual_scale', seeds=_five),
)
overrides = dict(
    n_layer=4, n_embd=64, n_head=4,               # E = 64, 4 blocks, 4 heads (paper: 256, 12, 8)
    task='decision_tree', n_dims=5, n_points=16, tree_depth=4, curriculum=False,  # paper: d = 20, 101 points
    learning_rate=1e-3, batch_size=64, max_iters=3000,   # Adam, constant lr (paper 1e-4 at full size)
    keep_every=1000,
)
run_dir = 'out/study/tree_{arm}_s{seed}'
out = 'out/study/sweeps/tree_init'
evaluate = [dict(score_vs='tree_bayes', baselines='tree_bayes', all_ckpts=True),   # the table's score
            dict(baseline_run='out/study/tree_gpt2_baseline_s1336', plot=False)]  # the paper's, secondary
compare = [('gpt2_quirks', 'gpt2'), ('gpt2_rms_quirks', 'gpt2_rms'), ('gpt2_rms_position', 'gpt2_rms'),
           ('gpt2_rms_residual', 'gpt2_rms'), ('gpt2_rms', 'gpt2'),
           ('gpt2_rms_position', 'gpt2_rms_quirks')]  # (added after the 3-seed table: is position all of it?)
