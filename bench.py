"""
Speed benchmark: prints Markdown tables of times and ratios, asserts nothing. Each ratio is measured within
one run (one process, one sitting), so it says more than the absolute times, which follow the machine's load.
    python bench.py                            # every section; several minutes on a CPU
    python bench.py --sections=check,scan      # a subset: check, scan, small, paper, layers
    python bench.py --device=cuda              # on a GPU (the triton scan joins the cpu one)
    OMP_NUM_THREADS=2 python bench.py          # the thread count is torch's (the README's tables: 2 threads)

check   every scan kernel (cpu; triton, in the interpreter at a tiny shape without a GPU) against the fp64
        torch reference: the max error of the output and of every gradient over the max of the reference
scan    the selective scan alone, forward + backward, at the study's small Mamba (b 64, d 256, n 16, l 22)
        and the paper's (b 64, d 1024, n 16, l 82): the fused cpu backend (triton on CUDA) against the torch
        backend (on CUDA also the paper's longer prompts, bf16, and mamba_ssm's kernel where it is installed)
small   a training step (forward, backward, Adam) at the study's size (E 64, 4 blocks, d 5, 11 points, batch
        64) of GPT-2, Llama and Mamba, Mamba once per scan backend, and the Llama-Mamba hybrid; ratio to GPT-2
paper   the same at the paper's size (E 256, 12 blocks, d 20, 41 points, batch 64)
layers  a 12-block Mamba at paper size, forward + backward at 82 / 202 / 282 tokens, per scan backend and the
        per-timestep loop most reference code uses (ssm_scan.selective_scan_naive; where 12 layers of it would
        not fit in memory it is timed on one layer and multiplied by 12, and the table says so)
"""
import os
import sys
import time

import torch

if not torch.cuda.is_available():  # the Triton kernel runs on CPU tensors in its interpreter (read at import)
    os.environ.setdefault("TRITON_INTERPRET", "1")
import configurator
import model as model_module
import ssm_scan
import ssm_scan_guard
import train
from harness import UserError
from model import ICLModel

# -----------------------------------------------------------------------------
# defaults, each overridable with --key=value
device = ''                      # '' = cuda when there is one, else cpu
sections = 'check,scan,small,paper,layers'   # which tables: any of check, scan, small, paper, layers
reps = 5                         # timed calls per measurement (the median is shown)
# -----------------------------------------------------------------------------
if any(a in ('-h', '--help') for a in sys.argv[1:]):
    try:
        print(configurator.help_text(__file__, __doc__.strip()))
    except BrokenPipeError:  # `--help | head`: the reader left
        pass
    sys.exit(0)
try:  # the same loader as train.py: a typo is refused, not ignored
    opts, _ = configurator.load(sys.argv[1:], configurator.defaults_of(globals()), script='bench.py')
    if set(opts['sections'].split(',')) - {'check', 'scan', 'small', 'paper', 'layers'}:
        raise UserError(f"--sections={opts['sections']!r}: choose from check, scan, small, paper, layers")
except UserError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
device = torch.device(opts['device'] or ('cuda' if torch.cuda.is_available() else 'cpu'))
sections = opts['sections'].split(',')
reps = opts['reps']
kernel = 'triton' if device.type == 'cuda' else 'cpu'  # the fused backend of this device
if device.type == 'cuda':
    mem_budget = torch.cuda.get_device_properties(device).total_memory * 0.6
else:
    mem_budget = 16 * 2**30 * 0.6


def sync():
    if device.type == 'cuda':
        torch.cuda.synchronize()


def timeit(fn, reps=reps):
    """median wall-clock seconds of reps calls, after one warm-up call"""
    fn()
    sync()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def build(name, *extra):
    argv = [f'configs/{name}.py', 'configs/linear_regression.py', f'--device={device.type}', *extra]
    cfg, _ = train.load_config(argv)
    torch.manual_seed(0)
    return ICLModel(train.validate(cfg)).to(device), cfg


def train_step(model, n_points, n_dims, batch=64):
    xs = torch.randn(batch, n_points, n_dims, device=device)
    ys = torch.randn(batch, n_points, 1, device=device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step():
        opt.zero_grad(set_to_none=True)
        ((model(xs, ys) - ys) ** 2).mean().backward()
        opt.step()
    return step


print(f"device: {device} | torch {torch.__version__} | threads {torch.get_num_threads()}")

def copy_bandwidth(nbytes=2**28):
    """GB/s of a plain tensor copy on this device (bytes read + written / time): the roofline a memory-bound
    kernel is measured against"""
    src = torch.empty(nbytes // 4, device=device)
    dst = torch.empty_like(src)
    return 2 * nbytes / timeit(lambda: dst.copy_(src)) / 1e9


def outputs_and_grads(fn, x, g, **kw):  # [out, grads of every input]
    out = fn(**x, **{"delta_softplus": True, **kw})
    return [out, *torch.autograd.grad(out, list(x.values()), g)]


def scan_timing(fn, x, g):
    """[fwd ms, GB/s, fwd+bwd ms, GB/s, activation MB, peak MB]: ms are medians of reps calls (wall clock
    around a device sync, ~10 us included), GB/s uses the minimal traffic of a fused kernel (docs/scan.md),
    MB held from forward to backward and at peak (CUDA only)"""
    (b, d, l), n, e = g.shape, x["A"].shape[1], g.element_size()
    # bytes a fused kernel must touch: forward u, delta, z, out + B, C; fwd+bwd adds g, the grads, a re-read
    traffic = [e * (4 * b * d * l + 2 * b * n * l), e * (11 * b * d * l + 4 * b * n * l) + 8 * b * n * l]
    steps = (lambda: fn(**x, delta_softplus=True), lambda: outputs_and_grads(fn, x, g))
    res = []
    for step, nbytes in zip(steps, traffic):
        ms = 1e3 * timeit(step)
        res += [ms, nbytes / ms / 1e6]
    if g.is_cuda:
        sync()
        m0 = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        out = fn(**x, delta_softplus=True)
        res.append((torch.cuda.memory_allocated() - m0) / 2**20)
        torch.autograd.grad(out, list(x.values()), g)
        res.append((torch.cuda.max_memory_allocated() - m0) / 2**20)
    return res + [float("nan")] * (6 - len(res))


def check_table(name, fn, cases, shape):
    # the kernel against the fp64 torch reference: max error over max |reference|, per output
    print(f"\n| {name}, (b, d, l, n) = {shape}: max err / max ref | out | du | ddelta | dA | dB | dC | dD "
          "| dz | ddelta_bias |\n" + "|---" * 10 + "|")
    for dtype, det in cases:
        x, g = ssm_scan_guard.example_inputs(*shape, dtype, device)
        x64 = {k: v.detach().double().requires_grad_() for k, v in x.items()}
        ref = outputs_and_grads(ssm_scan.selective_scan_torch, x64, g.double())
        got = outputs_and_grads(fn, x, g, **({"deterministic": True} if det else {}))
        err = [(a.double() - r).abs().max() / r.abs().max() for a, r in zip(got, ref)]
        label = f"{str(dtype)[6:]}{' deterministic' if det else ''}"
        print(f"| {label} | " + " | ".join(f"{v:.1e}" for v in err) + " |", flush=True)


if 'check' in sections:
    print("\n## every scan kernel against the fp64 torch reference")
    fp32_bf16 = [(torch.float32, False), (torch.float32, True), (torch.bfloat16, False)]
    if ssm_scan.HAS_TRITON:  # without a GPU: the interpreter, ~0.2 ms per element, so a tiny shape
        triton_shape = (64, 512, 202, 16) if device.type == 'cuda' else (1, 5, 37, 2)
        check_table('triton', ssm_scan.selective_scan_triton, fp32_bf16, triton_shape)
    if device.type == 'cpu':
        cpu_cases = [(torch.float32, False), (torch.float64, False), (torch.bfloat16, False)]
        check_table('cpu', ssm_scan.selective_scan_cpu, cpu_cases, (4, 70, 90, 16))

if 'scan' in sections:
    copy = copy_bandwidth()
    print("\n## the selective scan, forward + backward (ms, median of reps)\n")
    print("effective GB/s: the bytes a fused scan must read and write (inputs, outputs, grads) / time; "
          f"a plain copy on this {device.type} runs at {copy:.3g} GB/s (act/peak MB: CUDA only)\n")
    kernel_fn = ssm_scan.selective_scan_triton if kernel == 'triton' else ssm_scan.selective_scan_cpu
    fns = {'torch': ssm_scan.selective_scan_torch, kernel: kernel_fn}
    if device.type == 'cuda':
        try:
            from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
            fns['mamba_ssm'] = selective_scan_fn
        except Exception as e:  # expected without a CUDA build of mamba-ssm
            print(f"mamba_ssm: no comparison ({type(e).__name__}: {e})\n")
    print("| shape (b, d, n, l) | dtype | backend | fwd ms | fwd+bwd ms | speed-up vs torch | fwd+bwd GB/s | "
          "% of copy | act MB | peak MB |\n" + "|---" * 10 + "|")
    shapes = [(64, 256, 16, 22, torch.float32), (64, 1024, 16, 82, torch.float32)]
    if device.type == 'cuda':  # the paper's prompt lengths: 41, 101 and 141 points
        shapes = [(64, d, 16, l, dt) for d in (1024, 512) for dt in (torch.float32, torch.bfloat16)
                  for l in (82, 202, 282)]
    for b, d, n, l, dtype in shapes:
        x, g = ssm_scan_guard.example_inputs(b, d, l, n, dtype, device)
        timed = {name: scan_timing(fn, x, g) for name, fn in fns.items()}
        for name, (fwd, _, both, rate, act, peak) in timed.items():
            print(f"| {b}, {d}, {n}, {l} | {str(dtype)[6:]} | {name} | {fwd:.2f} | {both:.2f} | "
                  f"{timed['torch'][2] / both:.1f}x | {rate:.3g} | {100 * rate / copy:.1f}% | {act:.3g} | "
                  f"{peak:.3g} |", flush=True)


def step_table(title, extra, n_points, n_dims):
    print(f"\n## a training step at {title} (ms, median of reps): ratio to GPT-2\n")
    print("| model | scan backend | backbone params | ms/step | / GPT-2 |\n|---|---|---|---|---|")
    rows = [('gpt2', None), ('llama', None), ('mamba', 'torch'), ('mamba', kernel), ('llama_mamba', kernel)]
    base = None
    for name, backend in rows:
        flags = [*extra] + ([f'--scan_backend={backend}'] if backend else [])
        model, _ = build(name, *flags)
        t = timeit(train_step(model, n_points, n_dims))
        base = base or t
        params = model.param_counts()['backbone']
        print(f"| {name} | {backend or '-'} | {params:,} | {1e3 * t:.0f} | {t / base:.1f}x |", flush=True)
        del model


if 'small' in sections:
    small = ['--n_layer=4', '--n_embd=64', '--n_head=4', '--n_dims=5', '--n_points=11', '--curriculum=False']
    step_table("the study's size (E 64, 4 blocks, d 5, 11 points, batch 64)", small, 11, 5)
if 'paper' in sections:
    paper = ['--curriculum=False']
    step_table("the paper's size (E 256, 12 blocks, d 20, 41 points, batch 64)", paper, 41, 20)

if 'layers' in sections:
    print("\n## a 12-block Mamba, E = 256, batch 64: forward + backward seconds\n")
    backends = ['torch', kernel, 'naive']
    print('| tokens | ' + ' | '.join(backends) + ' | naive / torch |\n' + '|---' * (len(backends) + 2) + '|')
    real_scan = model_module.selective_scan

    def naive(*a, backend=None, deterministic=False, **k):  # swapped in where model.py calls selective_scan
        return ssm_scan.selective_scan_naive(*a, **k)
    for n_points in (41, 101, 141):
        L = 2 * n_points
        row = {}
        for backend in backends:
            model, _ = build('mamba', f'--scan_backend={"torch" if backend == "naive" else backend}')
            layers = 1
            if backend == 'naive':
                model_module.selective_scan = naive
                per_layer = 64 * 1024 * L * 16 * 4 * 4  # dA, dBu and saved per-step states in fp32, roughly
                if 12 * per_layer > mem_budget:
                    model.h = model.h[:1]  # time one layer, scale by 12
                    layers = 12
            xs = torch.randn(64, n_points, 20, device=device)
            ys = torch.randn(64, n_points, 1, device=device)

            def fwd_bwd():
                model.zero_grad(set_to_none=True)
                ((model(xs, ys) - ys) ** 2).mean().backward()
            try:
                note = ' (1 layer x 12)' if layers > 1 else ''
                row[backend] = (timeit(fwd_bwd, max(1, reps // 2)) * layers, note)
            finally:
                model_module.selective_scan = real_scan
            del model
        cells = [f"{row[b][0]:.2f}{row[b][1]}" for b in backends]
        print(f"| {L} | " + ' | '.join(cells) + f" | {row['naive'][0] / row['torch'][0]:.1f}x |", flush=True)
