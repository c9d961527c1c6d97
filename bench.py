"""
Model benchmark: prints numbers and ratios, asserts nothing.
    python bench.py                 # paper size (E = 256, 12 blocks, batch 64); minutes on a CPU
    python bench.py --quick         # fewer repeats, one layer for the naive scan
    python bench.py --device=cuda
    python bench.py --sections=2    # only the steps/s table; --points=41,101 picks the scan rows

1. forward+backward of a 12-block Mamba (E = 256, expand 4) at batch 64 and 82 / 202 / 282 tokens
   (41 / 101 / 141 points), with our torch scan (and triton on CUDA) next to the straightforward
   per-timestep loop most reference code uses (ssm_scan.selective_scan_naive). The naive loop keeps
   (b, d, l, n) tensors per layer for autograd; where 12 layers of it would not fit in memory it is
   timed on ONE layer and multiplied by 12, and the table says so.
2. training steps/s (forward, backward, Adam) of GPT-2, Llama, Mamba and llama_mamba at paper size
   on linear regression (41 points = 82 tokens, batch 64).
"""
import sys
import time

import torch

import ssm_scan
import train
from model import ICLModel

args = dict(a[2:].split('=', 1) if '=' in a else (a[2:], 'True') for a in sys.argv[1:])
device = torch.device(args.get('device', 'cuda' if torch.cuda.is_available() else 'cpu'))
quick = args.get('quick') == 'True'
sections = args.get('sections', '1,2').split(',')
points = [int(p) for p in args.get('points', '41,101,141').split(',')]
reps = 1 if quick else 3
mem_budget = (torch.cuda.get_device_properties(device).total_memory if device.type == 'cuda' else 16 * 2**30) * 0.6


def sync():
    if device.type == 'cuda':
        torch.cuda.synchronize()


def timeit(fn, reps=reps):
    fn()  # warm-up
    sync()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def build(name, *extra):
    cfg, _ = train.load_config([f'configs/{name}.py', 'configs/linear_regression.py', f'--device={device.type}', *extra])
    torch.manual_seed(0)
    return ICLModel(train.validate(cfg)).to(device), cfg


def fwd_bwd(model, n_points, batch=64):
    xs, ys = torch.randn(batch, n_points, 20, device=device), torch.randn(batch, n_points, 1, device=device)
    def run():
        model.zero_grad(set_to_none=True)
        ((model(xs, ys) - ys) ** 2).mean().backward()
    return run


print(f"device: {device} | torch {torch.__version__} | threads {torch.get_num_threads()}")
print("\n## 1. Mamba, 12 blocks, E = 256, batch 64: forward+backward seconds\n")
backends = ['torch', 'naive'] + (['triton'] if device.type == 'cuda' and ssm_scan.HAS_TRITON else [])
print('| tokens | ' + ' | '.join(backends) + ' | naive / torch |\n|---' * 1 + '|---' * (len(backends) + 1) + '|')
import model as model_module  # the naive loop is swapped in where model.py calls selective_scan
real_scan = model_module.selective_scan
naive = lambda *a, backend=None, deterministic=False, **k: ssm_scan.selective_scan_naive(*a, **k)
for n_points in (points if '1' in sections else []):
    L, row = 2 * n_points, {}
    for backend in backends:
        model, _ = build('mamba', f'--scan_backend={"torch" if backend == "naive" else backend}')
        layers = 1
        if backend == 'naive':
            model_module.selective_scan = naive
            per_layer = 64 * 1024 * L * 16 * 4 * 4  # dA, dBu and saved per-step states in fp32, roughly
            if quick or 12 * per_layer > mem_budget:
                model.h, layers = model.h[:1], 12  # time one layer, scale by 12
        try:
            row[backend] = (timeit(fwd_bwd(model, n_points)) * layers, ' (1 layer x 12)' if layers > 1 else '')
        finally:
            model_module.selective_scan = real_scan
        del model
    cells = [f"{row[b][0]:.2f}{row[b][1]}" for b in backends]
    print(f"| {L} | " + ' | '.join(cells) + f" | {row['naive'][0] / row['torch'][0]:.1f}x |", flush=True)

print("\n## 2. training steps/s at paper size (linear regression, 82 tokens, batch 64)\n")
print('| model | backbone params | steps/s |\n|---|---|---|')
for name in (('gpt2', 'llama', 'mamba', 'llama_mamba') if '2' in sections else ()):
    model, cfg = build(name)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    run = fwd_bwd(model, 41)
    def step():
        run()
        opt.step()
    t = timeit(step)
    print(f"| {name} | {model.param_counts()['backbone'] / 1e6:.2f}M | {1 / t:.3f} |", flush=True)
    del model, opt
