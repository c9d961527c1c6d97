"""
Baseline benchmark: our batched baselines vs the reference approach (one sklearn fit / one small net per
prompt per prefix). Prints numbers, asserts nothing.
    python bench_baselines.py                    # the paper's sizes; ~10-20 minutes on 2 CPU cores
                                                 # (GD-MLP dominates)
    python bench_baselines.py --mlp_prompts=64   # a shorter GD-MLP run
    python bench_baselines.py --threads=2 --device=cuda

1. least squares, 6400 prompts x 41 prefixes at d = 20 (linear regression)
2. Lasso (alpha 1e-3), 6400 x 41 at d = 20 (sparse linear): batched vs a loop of sklearn Lasso fits, timed on
   `sk_prompts` prompts and extrapolated; error curves compared on those prompts
3. GD-MLP (paper: 1000 Adam steps on one random point), `mlp_prompts` x 101 prefixes (2-layer ReLU MLP task)
4. what the reference approach would cost for the paper's evaluation (6400 prompts per task)
One thread by default: sklearn's coordinate descent runs on one core, so this compares like with like, and
on shared cores a second torch thread mostly waits for the other processes.
"""
import sys
import time
import warnings

import torch

import baselines
import tasks

args = dict(a[2:].split('=', 1) if '=' in a else (a[2:], 'True') for a in sys.argv[1:])
device = args.get('device', 'cpu')
n_prompts = int(args.get('n_prompts', 6400))
sk_prompts = int(args.get('sk_prompts', 64))
mlp_prompts = int(args.get('mlp_prompts', 640))
torch.set_num_threads(int(args.get('threads', 1)))
gen = lambda: torch.Generator().manual_seed(0)
curve = lambda p, ys: (p.float().cpu() - ys.cpu()).pow(2).mean((0, 2))  # squared error per context length


def timed(fn, *a, **kw):
    t0 = time.perf_counter()
    out = fn(*a, **kw)
    if device.startswith('cuda'):
        torch.cuda.synchronize()
    return out, time.perf_counter() - t0


print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), device {device}")
# 1. least squares
xs, ys = tasks.sample('linear_regression', n_prompts, 41, 20, gen())
p, t_ls = timed(baselines.least_squares, xs.to(device), ys.to(device))
err = curve(p, ys)
print(f"least squares  {n_prompts} x 41 at d=20: {t_ls:.2f} s | error at i = 0, 10, 19, 20, 40: "
      + ', '.join(f'{err[i]:.3g}' for i in (0, 10, 19, 20, 40)) + " (d - i below d, 0 from d on)")

# 2. lasso: batched vs sklearn's loop
xs, ys = tasks.sample('sparse_linear_regression', n_prompts, 41, 20, gen())
p, t_ours = timed(baselines.lasso, xs.to(device), ys.to(device), alpha=1e-3)
try:
    from sklearn.linear_model import Lasso  # only here, for the comparison (optional package)
except ImportError:
    Lasso = None
    print(f"lasso          {n_prompts} x 41 at d=20: {t_ours:.2f} s batched "
          f"(scikit-learn not installed: no comparison)")
if Lasso is not None:
    X, Y = xs[:sk_prompts].double().numpy(), ys[:sk_prompts, :, 0].double().numpy()
    ref, fits, t0 = torch.zeros(sk_prompts, 41, 1), 0, time.perf_counter()
    with warnings.catch_warnings():
        # the reference's settings; it warns (and stops short) on many small-i fits
        warnings.simplefilter('ignore')
        for b in range(sk_prompts):
            for i in range(1, 41):
                ref[b, i] = float(Lasso(alpha=1e-3, fit_intercept=False, max_iter=100000)
                                  .fit(X[b, :i], Y[b, :i]).predict(X[b, i:i + 1])[0])
                fits += 1
    t_fit = (time.perf_counter() - t0) / fits
    t_sk = t_fit * n_prompts * 40
    e_ours, e_sk = curve(p[:sk_prompts], ys[:sk_prompts]), curve(ref, ys[:sk_prompts])
    print(f"lasso          {n_prompts} x 41 at d=20: {t_ours:.2f} s batched | "
          f"sklearn loop {t_fit * 1e3:.2f} ms/fit, timed on {fits} fits "
          f"({sk_prompts} prompts), extrapolated {t_sk:.0f} s -> {t_sk / t_ours:.0f}x faster")
    same = (e_ours - e_sk).abs() <= 1e-3 * e_sk.clamp(min=1e-3)
    print(f"               error curves on those prompts, ours vs sklearn: "
          f"equal within 0.1% at {int(same.sum())}/41 context lengths "
          f"(all i >= {int((~same).nonzero().max()) + 1 if (~same).any() else 0}); "
          f"largest gap {(e_ours - e_sk).abs().max():.3g} at i = "
          f"{int((e_ours - e_sk).abs().argmax())} (error {e_sk[(e_ours - e_sk).abs().argmax()]:.3g}); "
          f"mean error ours {e_ours.mean():.4f}, sklearn {e_sk.mean():.4f}")
    # sklearn's default tol stops coordinate descent early when i < d; at a tight tol it lands where we do
    ok, gap = 0, 0.0
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        for b in range(min(8, sk_prompts)):
            for i in range(1, 41):
                fit = (Lasso(alpha=1e-3, fit_intercept=False, max_iter=20000, tol=1e-10)
                       .fit(X[b, :i], Y[b, :i]))
                if fit.n_iter_ < 20000:
                    ok, gap = ok + 1, max(gap, abs(float(fit.predict(X[b, i:i + 1])[0]) - p[b, i, 0].item()))
    print(f"               sklearn at tol=1e-10 ({min(8, sk_prompts)} prompts): "
          f"converged on {ok}/{min(8, sk_prompts) * 40} fits, largest prediction gap to ours there {gap:.2g}")

# 3. GD-MLP, the paper's setting, batched over all fits
xs, ys = tasks.sample('relu2nn_regression', mlp_prompts, 101, 20, gen())
p, t_mlp = timed(baselines.gd_mlp, xs.to(device), ys.to(device))
err = curve(p, ys)
per_fit_step = t_mlp / (mlp_prompts * 100 * 1000)
print(f"GD-MLP         {mlp_prompts} x 101 at d=20, 1000 Adam steps: {t_mlp:.0f} s "
      f"({per_fit_step * 1e6:.1f} us per fit-step) | "
      f"error / zero at i = 10, 50, 100: " + ', '.join(f'{err[i] / err[0]:.3f}' for i in (10, 50, 100)))

# 4. the reference approach: one net per prompt per prefix, each stepped from Python (its ParallelNetworks
# loops over nets)
net = torch.nn.Sequential(torch.nn.Linear(20, 100), torch.nn.ReLU(), torch.nn.Linear(100, 1))
opt = torch.optim.Adam(net.parameters(), lr=5e-3)
x1, y1, t0 = torch.randn(1, 20), torch.randn(1, 1), time.perf_counter()
for _ in range(300):
    opt.zero_grad()
    torch.nn.functional.mse_loss(net(x1), y1).backward()
    opt.step()
t_ref_step = (time.perf_counter() - t0) / 300
fits_lasso, fits_mlp = 6400 * 40, 6400 * 100
print("reference cost at 6400 prompts per task: "
      + (f"Lasso {fits_lasso:,} sklearn fits = {fits_lasso * t_fit / 60:.0f} min "
         f"(ours {t_ours * 6400 / n_prompts:.0f} s); " if Lasso else '')
      + f"GD-MLP {fits_mlp:,} nets x 1000 steps at {t_ref_step * 1e3:.2f} ms/step = "
      f"{fits_mlp * 1000 * t_ref_step / 3600:.0f} h (ours ~{per_fit_step * fits_mlp * 1000 / 60:.0f} min); "
      f"the reference notebook recomputes them for every model evaluated (12 architectures per task)")
