# The paper's sweep at the paper's settings: 12 architectures x 6 tasks = 72 runs, each configs/<arch>.py
# then configs/<task>.py (E = 256, 12 blocks; the task's dimension, prompt length, curriculum, learning rate
# and 500k steps; MQAR's E = 128, 2 blocks), then the Table-3 evaluation. Runs go to out/paper/<arch>-<task>/.
#     python sweep.py configs/sweeps/paper.py            # on every GPU here, one run per GPU at a time
#     python sweep.py configs/sweeps/paper.py --dry-run  # the 72 runs, where each stands, their commands
#     python sweep.py configs/sweeps/paper.py --slurm    # out/paper/sweep.sbatch, a SLURM array
#     python sweep.py configs/sweeps/paper.py --cost     # projected GPU-hours (with no runs yet: the pilot)
#     python sweep.py configs/sweeps/paper.py --max_iters=2 --device=cpu --out=out/paper_cpu   # a smoke test
import torch

_archs = ['gpt2', 'gpt2_rms', 'gpt2_rope', 'gpt2_swiglu', 'gpt2_rms_swiglu', 'gpt2_rms_rope',
          'gpt2_rope_swiglu', 'llama', 'llama_mamba_pos', 'llama_mamba_ffn', 'llama_mamba', 'mamba']
_tasks = ['linear_regression', 'sparse_linear_regression', 'relu2nn_regression', 'decision_tree',
          'sparse_parity', 'mqar']
arms = {f'{a}-{t}': dict(configs=[f'configs/{a}.py', f'configs/{t}.py']) for a in _archs for t in _tasks}
out = 'out/paper'
run_dir = '{out}/{arm}'
_device = 'cuda' if torch.cuda.is_available() else 'cpu'
evaluate = [
    # Table 3 as the paper scores it: decision trees against the trained GPT-2, sparse parity against the
    # trained Mamba (a baseline run not finished yet is left out: its task falls back to 3-NN / the Bayes
    # learner)
    dict(baseline_run='decision_tree={out}/gpt2-decision_tree,sparse_parity={out}/mamba-sparse_parity',
         device=_device, out='results/paper_table3'),
    # and against classical baselines that do not depend on training (3-NN, the Bayes learner)
    dict(device=_device, plot=False, out='results/paper_table3_classical'),
]
sbatch = dict(job_name='icl-paper', time='48:00:00', gres='gpu:1', cpus_per_task=4)
