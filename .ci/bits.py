"""
Fingerprints of fp32 CPU training: trains every preset (and a few tasks and quirk sets) for a few steps at a
tiny size through train.py and prints one line per run: a sha256 over the final weights, the Adam state and
the logged losses. A refactor that must not change training prints the same lines before and after:
    python .ci/bits.py > after.txt
    git worktree add /tmp/base HEAD~1 && (cd /tmp/base && python -  < $OLDPWD/.ci/bits.py) > before.txt
    diff before.txt after.txt
Run from the repository root (it trains whatever train.py the working directory holds). One thread.
"""
import hashlib
import json
import os
import subprocess
import sys
import tempfile

import torch

TINY = ['--n_layer=2', '--n_embd=32', '--n_head=4', '--max_iters=12', '--ckpt_interval=12',
        '--log_interval=1', '--eval_interval=6', '--batch_size=8', '--device=cpu']
PRESETS = sorted(f for f in os.listdir('configs') if f.endswith('.py') and f[:-3] not in
                 ('linear_regression', 'sparse_linear_regression', 'relu2nn_regression', 'decision_tree',
                  'sparse_parity', 'mqar'))
RUNS = [[f'configs/{p}'] for p in PRESETS]
RUNS += [[f'configs/{p}', '--reference_quirks=True'] for p in ('gpt2_rms.py', 'mamba.py', 'llama_mamba.py')]
RUNS += [['configs/gpt2.py', f'--task={t}', '--n_dims=6'] for t in
         ('sparse_linear_regression', 'relu2nn_regression', 'decision_tree', 'sparse_parity', 'mqar')]
RUNS += [['configs/llama_mamba.py', '--curriculum=True', '--curriculum_interval=4', '--n_dims=7',
          '--curriculum_dims_start=5', '--n_points=15', '--curriculum_points_start=11', '--seed=7']]


def fingerprint(out_dir):
    ckpt = torch.load(os.path.join(out_dir, 'ckpt.pt'), map_location='cpu', weights_only=False)
    h = hashlib.sha256()

    def walk(x):
        if isinstance(x, torch.Tensor):
            h.update(x.detach().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
        elif isinstance(x, dict):
            for k in sorted(x, key=str):
                h.update(str(k).encode())
                walk(x[k])
        elif isinstance(x, (list, tuple)):
            for v in x:
                walk(v)
        else:
            h.update(repr(x).encode())
    walk(ckpt['model'])
    walk(ckpt['optimizer']['state'])
    # the logged losses, grad norms and learning rates (not the clock columns)
    with open(os.path.join(out_dir, 'metrics.jsonl')) as f:
        for line in f:
            row = json.loads(line)
            h.update(repr([row.get(k) for k in ('step', 'loss', 'grad_norm', 'lr', 'val_loss')]).encode())
    return h.hexdigest()[:16], ckpt['step']


with tempfile.TemporaryDirectory() as tmp:
    env = dict(os.environ, OMP_NUM_THREADS='1')
    for i, argv in enumerate(RUNS):
        out = os.path.join(tmp, str(i))
        r = subprocess.run([sys.executable, 'train.py', *argv, *TINY, f'--out_dir={out}'], env=env,
                           capture_output=True, text=True)
        label = ' '.join(a.replace('configs/', '') for a in argv)
        if r.returncode:
            print(f'{label}: FAILED ({r.stderr.strip().splitlines()[-1:]})', flush=True)
            continue
        digest, step = fingerprint(out)
        print(f'{label}: {digest} (step {step})', flush=True)
