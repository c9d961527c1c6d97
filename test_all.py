"""
The test suite: `python -m pytest -q test_all.py`. CPU only, tiny shapes.
Sections (one per concern, in file order): scan reference, model, tasks, train/config,
Triton scan (interpreter), baselines/evaluate, reliability.
"""
import os
os.environ.setdefault("TRITON_INTERPRET", "1")  # must be set before ssm_scan is imported (see docs in ssm_scan.py)
import math
import pytest
import torch

# -----------------------------------------------------------------------------
# scan reference

import ssm_scan
from ssm_scan import selective_scan_torch, selective_scan_naive


def _scan_inputs(b=2, d=3, l=7, n=4, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=dtype)
    return dict(u=r(b, d, l), delta=0.5 * r(b, d, l), A=-torch.rand(d, n, generator=g, dtype=dtype) - 0.2,
                B=r(b, n, l), C=r(b, n, l), D=r(d), z=r(b, d, l), delta_bias=0.3 * r(d))


def test_scan_reference_matches_per_element_loop():
    # the most literal reading of the recurrence: python loops over every b, d, n, t in fp64
    x = _scan_inputs()
    out = selective_scan_torch(**x, delta_softplus=True)
    u, A, B, C = x["u"], x["A"], x["B"], x["C"]
    dt = torch.nn.functional.softplus(x["delta"] + x["delta_bias"][:, None])
    ref = torch.zeros_like(u)
    for b in range(u.shape[0]):
        for d in range(u.shape[1]):
            h = [0.0] * A.shape[1]
            for t in range(u.shape[2]):
                y = 0.0
                for n in range(A.shape[1]):
                    h[n] = math.exp(dt[b, d, t] * A[d, n]) * h[n] + dt[b, d, t] * B[b, n, t] * u[b, d, t]
                    y += C[b, n, t] * h[n]
                y += x["D"][d] * u[b, d, t]
                z = x["z"][b, d, t]
                ref[b, d, t] = y * z / (1 + math.exp(-z))
    assert torch.allclose(out, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("chunk", [None, 3])
def test_scan_reference_gradcheck(monkeypatch, chunk):
    if chunk:  # force several chunks so the state and adjoint carries across chunk borders are exercised
        monkeypatch.setattr(ssm_scan, "_chunk_len", lambda b, d, n, l, cuda=False: chunk)
    x = {k: v.requires_grad_() for k, v in _scan_inputs(l=8).items()}
    f = lambda *a: selective_scan_torch(*a, delta_softplus=True)
    assert torch.autograd.gradcheck(f, tuple(x.values()))


def test_scan_reference_keeps_only_chunk_start_states(monkeypatch):
    # the backward recomputes each chunk from its start state, so the graph must hold (b, d, n) per chunk and not, through
    # a view, the chunk's whole (T, b, d, n) state buffer (that would be the full b*d*l*n the chunking exists to avoid)
    for l in (22, 82, 282, 5000):  # paper size: at most 16 chunk-start states of 64 x 1024 x 16 whatever l is
        assert math.ceil(l / ssm_scan._chunk_len(64, 1024, 16, l)) <= 16
    monkeypatch.setattr(ssm_scan, "_chunk_len", lambda b, d, n, l, cuda=False: 10)
    x = {k: v.float().requires_grad_() for k, v in _scan_inputs(b=2, d=4, l=100, n=8).items()}
    y = selective_scan_torch(**x, delta_softplus=True)
    fn = y.grad_fn
    while type(fn).__name__ != "_ScanTorchBackward":  # walk back past the D skip and the z gate
        fn = fn.next_functions[0][0]
    saved = fn.saved_tensors[5:]  # after u, dt, A, B, C: one start state per chunk
    assert len(saved) == 10 and all(t.untyped_storage().nbytes() == t.numel() * 4 for t in saved)


@pytest.mark.parametrize("opts", [dict(), dict(D=None), dict(z=None), dict(delta_bias=None), dict(delta_softplus=False)])
def test_scan_reference_matches_naive_fp32(opts):
    x = {k: v.float().requires_grad_() for k, v in _scan_inputs(b=2, d=5, l=37, n=8).items()}
    kw = {**x, "delta_softplus": True, **opts}
    outs = [f(**kw) for f in (selective_scan_torch, selective_scan_naive)]
    g = torch.randn_like(outs[0])
    wrt = [v for k, v in x.items() if kw.get(k) is not None]
    grads = [torch.autograd.grad(o, wrt, g) for o in outs]
    # softplus off lets dt go negative, so states grow (to ~1e6 here): tolerances relative to the scale
    close = lambda a, b, tol: torch.allclose(a, b, rtol=tol, atol=tol * b.abs().max().item())
    assert close(outs[0], outs[1], 1e-5)
    for a, b in zip(*grads):
        assert close(a, b, 1e-4)


def test_scan_bf16_and_strided_inputs():
    x = _scan_inputs(b=2, d=4, l=9, n=4, dtype=torch.float32)
    ref = selective_scan_torch(**x, delta_softplus=True)
    # (b, l, d) storage passed as transposed (b, d, l) views, as the Mamba block does
    strided = {k: (v.transpose(1, 2).contiguous().transpose(1, 2) if v.dim() == 3 else v) for k, v in x.items()}
    assert torch.allclose(selective_scan_torch(**strided, delta_softplus=True), ref, rtol=1e-6, atol=1e-6)
    half = {k: (v.bfloat16() if k in ("u", "delta", "z", "B", "C") else v) for k, v in x.items()}
    out = selective_scan_torch(**half, delta_softplus=True)
    assert out.dtype == torch.bfloat16 and torch.allclose(out.float(), ref, rtol=5e-2, atol=5e-2)


def test_scan_backend_choice():
    assert ssm_scan.resolve_backend("torch", torch.device("cpu")) == "torch"
    with pytest.raises(ValueError, match="backend"):
        ssm_scan.resolve_backend("cuda-magic", torch.device("cpu"))

# -----------------------------------------------------------------------------
# model

import train
from model import ModelConfig, ICLModel, MambaMixer, MambaBlock

PAPER_PARAMS = dict(gpt2=9.55e6, gpt2_rms=9.54e6, gpt2_rope=9.47e6, gpt2_swiglu=12.68e6, gpt2_rms_swiglu=12.67e6,
                    gpt2_rms_rope=9.46e6, gpt2_rope_swiglu=12.60e6, llama=12.59e6, llama_mamba_pos=13.47e6,
                    llama_mamba_ffn=13.66e6, llama_mamba=14.53e6, mamba=10.51e6)  # docs/paper.md §3.5, backbone only
PRESETS = sorted(PAPER_PARAMS) + ["mambaformer"]


def _preset(name, *overrides):
    cfg, _ = train.load_config([f"configs/{name}.py", "configs/linear_regression.py", *overrides])
    return train.validate(cfg)


@pytest.mark.parametrize("name", sorted(PAPER_PARAMS))
def test_model_param_counts_match_paper(name):
    m = ICLModel(_preset(name))
    counts = m.param_counts()
    assert abs(counts["backbone"] - PAPER_PARAMS[name]) / PAPER_PARAMS[name] < 0.02
    assert counts["read_in_out"] == 20 * 256 + 256 + 256 + 1  # d = 20 -> E, E -> 1
    assert counts["total"] == sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("quirks", [False, True])
@pytest.mark.parametrize("name", PRESETS)
def test_model_is_causal(name, quirks):
    torch.manual_seed(0)
    m = ICLModel(_preset(name, "--n_layer=2", "--n_embd=32", "--n_head=4", f"--reference_quirks={quirks}")).double()
    xs, ys = torch.randn(2, 9, 20, dtype=torch.float64), torch.randn(2, 9, 1, dtype=torch.float64)
    p = m(xs, ys)
    xs2, ys2 = xs.clone(), ys.clone()
    xs2[:, 5:] += 1.0  # perturb x_5.. and y_4..: predictions 0..4 see neither
    ys2[:, 4:] -= 1.0
    p2 = m(xs2, ys2)
    assert torch.equal(p[:, :5], p2[:, :5])  # exactly, not approximately
    assert not torch.allclose(p[:, 5:], p2[:, 5:])  # and the future does matter


def test_model_init_invariants():
    m = ICLModel(_preset("llama_mamba"))
    mixers = [mod for mod in m.modules() if isinstance(mod, MambaMixer)]
    assert len(mixers) == 13  # the positional embedder + one per block
    for mix in mixers:
        dt = torch.nn.functional.softplus(mix.dt_proj.bias)
        assert dt.min() >= 1e-3 * 0.999 and dt.max() <= 0.1 * 1.001  # survives the whole-model init
        assert torch.equal(mix.A_log[0], torch.log(torch.arange(1, 17.0))) and torch.equal(mix.D, torch.ones_like(mix.D))
    gpt = ICLModel(_preset("gpt2"))
    proj, fc = gpt.h[0].mixer.c_proj.weight, gpt.h[0].ffn.c_fc.weight
    assert abs(proj.std().item() - 0.02 / math.sqrt(24)) < 1e-3 and abs(fc.std().item() - 0.02) < 1e-3
    quirky = ICLModel(_preset("gpt2_rms", "--reference_quirks=True"))
    assert abs(quirky.wpe.weight.std().item() - 1.0) < 0.05  # the reference hybrids' N(0, 1) position table


def test_model_reference_residual_doubling():
    cfg = _preset("llama_mamba", "--n_layer=1", "--n_embd=16", "--n_head=2", "--reference_quirks=True")
    blk = ICLModel(cfg).embed
    x = torch.randn(2, 6, 16)
    assert isinstance(blk, MambaBlock)
    assert torch.allclose(blk(x), 2 * x + blk.mixer(blk.norm(x)))
    clean = ICLModel(_preset("llama_mamba", "--n_layer=1", "--n_embd=16", "--n_head=2")).embed
    assert torch.allclose(clean(x), x + clean.mixer(clean.norm(x)))


def test_model_optimizer_groups_partition_and_skip_ssm_dynamics():
    m = ICLModel(_preset("llama_mamba", "--n_layer=1"))
    decay, no_decay = m.optim_groups(0.1)
    ids = lambda g: {id(p) for p in g["params"]}
    assert ids(decay).isdisjoint(ids(no_decay)) and len(ids(decay) | ids(no_decay)) == len(list(m.parameters()))
    mix = m.embed.mixer
    assert id(mix.A_log) in ids(no_decay) and id(mix.D) in ids(no_decay) and id(mix.in_proj.weight) in ids(decay)


def test_model_rejects_bad_shapes_and_names():
    m = ICLModel(_preset("gpt2", "--n_layer=1", "--n_embd=16", "--n_head=2"))
    with pytest.raises(ValueError, match="dimension 20"):
        m(torch.randn(2, 5, 10), torch.randn(2, 5, 1))
    with pytest.raises(ValueError, match="n_positions"):
        m(torch.randn(1, 142, 20), torch.randn(1, 142, 1))
    with pytest.raises(ValueError, match="layer_pattern"):
        ModelConfig(layer_pattern="AX")
    with pytest.raises(ValueError, match="divisible"):
        ModelConfig(n_embd=30, n_head=4)

# -----------------------------------------------------------------------------
# tasks
import tasks

def _tasks_gen(seed=0):
    return torch.Generator().manual_seed(seed)

def test_tasks_shapes_dtypes():
    B, N, d = 3, 7, 6
    for task in tasks.TASK_NAMES:
        xs, ys = tasks.sample(task, B, N, d, _tasks_gen())
        assert xs.shape == (B, N, d) and ys.shape == (B, N, tasks.y_dim(task, d)), task
        assert xs.dtype == ys.dtype == torch.float32, task
        assert torch.isfinite(xs).all() and torch.isfinite(ys).all(), task
    assert tasks.y_dim("mqar", d) == d and tasks.y_dim("linear_regression", d) == 1
    assert tasks.PREDICT_LAST == {"mqar"}
    assert set(tasks.TASK_DEFAULTS) == {"sparsity", "mlp_hidden", "mlp_normalize", "tree_depth", "parity_k", "noise_std"}

def test_tasks_unknown_names_raise():
    for fn in (lambda: tasks.sample("linear_regresion", 2, 3, 4, _tasks_gen()), lambda: tasks.y_dim("linear_regresion", 4)):
        with pytest.raises(ValueError) as e:
            fn()
        assert "linear_regresion" in str(e.value) and "sparse_parity" in str(e.value)
    with pytest.raises(ValueError, match="skew"):
        tasks.sample_ood("skew", 2, 3, 4, _tasks_gen())
    with pytest.raises(ValueError, match="n_dims_active"):
        tasks.sample("linear_regression", 2, 3, 4, _tasks_gen(), n_dims_active=5)
    with pytest.raises(ValueError, match="noise_std"):
        tasks.sample("sparse_parity", 2, 3, 4, _tasks_gen(), noise_std=0.1)

def test_tasks_seeded():
    # same seed -> bit-identical stream (including a second draw from the same generator), other seed -> different
    for task in tasks.TASK_NAMES:
        g1, g2 = _tasks_gen(1), _tasks_gen(1)
        for _ in range(2):
            a, b = tasks.sample(task, 2, 5, 6, g1), tasks.sample(task, 2, 5, 6, g2)
            assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]), task
        c = tasks.sample(task, 2, 5, 6, _tasks_gen(2))
        assert not torch.equal(a[0], c[0]), task
    for v in tasks.OOD_VARIANTS:
        a, b, c = (tasks.sample_ood(v, 2, 5, 4, _tasks_gen(s)) for s in (1, 1, 2))
        assert all(torch.equal(t, u) for t, u in zip(a, b)), v
        assert not torch.equal(a[0], c[0]), v

@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_tasks_same_stream_on_cuda():
    for task in tasks.TASK_NAMES:
        xc, yc = tasks.sample(task, 2, 5, 6, _tasks_gen(3))
        xg, yg = tasks.sample(task, 2, 5, 6, _tasks_gen(3), device="cuda")
        assert xg.is_cuda and torch.equal(xg.cpu(), xc) and torch.equal(yg.cpu(), yc), task

def test_tasks_inactive_dims_zero():
    for task in tasks.TASK_NAMES:
        xs, ys = tasks.sample(task, 4, 9, 8, _tasks_gen(), n_dims_active=3)
        assert (xs[:, :, 3:] == 0).all() and (xs[:, :, :3] != 0).all(), task

def test_tasks_sparse_linear_support():
    # recover w per prompt by least squares on the active dims: exactly `sparsity` non-zeros
    B, d, d_act, k = 16, 10, 6, 3
    xs, ys = tasks.sample("sparse_linear_regression", B, 2 * d_act, d, _tasks_gen(), n_dims_active=d_act, sparsity=k)
    w = torch.linalg.lstsq(xs[:, :, :d_act].double(), ys.double()).solution.squeeze(-1)  # (B, d_act)
    assert ((w.abs() > 1e-6).sum(dim=1) == k).all()
    supports = {tuple(torch.nonzero(row.abs() > 1e-6).flatten().tolist()) for row in w}
    assert len(supports) > 1  # a fresh support per prompt, not one for the whole batch

def test_tasks_second_moments():
    # E[y^2] under the zero predictor, the normaliser of every error curve
    g, B, N, d, da = _tasks_gen(), 512, 16, 8, 5
    m = lambda task, **kw: tasks.sample(task, B, N, d, g, n_dims_active=da, **kw)[1].pow(2).mean().item()
    assert m("linear_regression") == pytest.approx(da, rel=0.15)
    assert m("sparse_linear_regression") == pytest.approx(3, rel=0.15)
    assert m("relu2nn_regression", mlp_hidden=20) == pytest.approx(20 * da / 2, rel=0.25)  # unnormalised (paper)
    assert m("relu2nn_regression", mlp_hidden=20, mlp_normalize=True) == pytest.approx(da, rel=0.25)  # Garg
    assert m("decision_tree") == pytest.approx(1, rel=0.15)
    assert m("sparse_parity") == 1.0
    # training noise adds exactly the noise on top of the same x and w
    (x0, y0), (x1, y1) = (tasks.sample("linear_regression", B, N, d, _tasks_gen(4), noise_std=s) for s in (0.0, 0.5))
    assert torch.equal(x0, x1) and (y1 - y0).std().item() == pytest.approx(0.5, rel=0.1)

def test_tasks_parity_is_product_of_two_coords():
    B, N, d = 16, 64, 6
    xs, ys = tasks.sample("sparse_parity", B, N, d, _tasks_gen(), parity_k=2)
    assert set(xs.unique().tolist()) == {-1.0, 1.0} and set(ys.unique().tolist()) == {-1.0, 1.0}
    found = []
    for b in range(B):  # exactly one pair explains all 64 labels (a wrong pair matches w.p. 2^-64)
        pairs = [(i, j) for i in range(d) for j in range(i + 1, d) if torch.equal(xs[b, :, i] * xs[b, :, j], ys[b, :, 0])]
        assert len(pairs) == 1
        found.append(pairs[0])
    assert len(set(found)) > 1  # subset drawn per prompt

def test_tasks_mqar():
    B, N, d = 8, 9, 5
    xs, ys = tasks.sample("mqar", B, N, d, _tasks_gen())
    assert torch.allclose(xs.norm(dim=-1), torch.full((B, N), math.sqrt(d)))
    assert torch.allclose(ys.norm(dim=-1), torch.full((B, N), math.sqrt(d)))
    hit = (xs[:, :-1] == xs[:, -1:]).all(dim=-1)  # (B, N-1) which key the query repeats
    assert (hit.sum(dim=1) == 1).all()
    q = hit.float().argmax(dim=1)
    assert torch.equal(ys[torch.arange(B), q], ys[:, -1])
    assert len(set(q.tolist())) > 1

def test_tasks_decision_tree_matches_reference():
    # replay the sampler's draws (xs, split coords over ALL d dims, node values) and walk the tree slowly
    B, N, d, da, depth = 3, 10, 6, 4, 3
    xs, ys = tasks.sample("decision_tree", B, N, d, _tasks_gen(5), n_dims_active=da, tree_depth=depth)
    g = _tasks_gen(5)
    x_ref = torch.randn(B, N, d, generator=g)
    x_ref[:, :, da:] = 0
    coords = torch.randint(0, d, (B, 2 ** (depth + 1) - 1), generator=g)
    values = torch.randn(B, 2 ** (depth + 1) - 1, generator=g)
    assert torch.equal(xs, x_ref)
    for b in range(B):
        for n in range(N):
            node = 0
            for _ in range(depth):
                node = 2 * node + 2 if xs[b, n, coords[b, node]] > 0 else 2 * node + 1
            assert node >= 2 ** depth - 1 and ys[b, n, 0] == values[b, node]

def test_tasks_curriculum():
    base = dict(n_dims=20, curriculum=True, curriculum_dims_start=5, curriculum_dims_inc=1, curriculum_interval=2000)
    short = dict(base, n_points=41, curriculum_points_start=11, curriculum_points_inc=2)
    long = dict(base, n_points=101, curriculum_points_start=26, curriculum_points_inc=5)
    expect_short = {0: (5, 11), 1999: (5, 11), 2000: (6, 13), 28000: (19, 39), 30000: (20, 41), 10**6: (20, 41)}
    expect_long = {0: (5, 26), 1999: (5, 26), 2000: (6, 31), 28000: (19, 96), 30000: (20, 101), 10**6: (20, 101)}
    for cfg, expect in ((short, expect_short), (long, expect_long)):
        for step, want in expect.items():
            assert tasks.curriculum(step, cfg) == want, (step, cfg["n_points"])
        assert tasks.curriculum(0, dict(cfg, curriculum=False)) == (20, cfg["n_points"])

def test_tasks_ood_shapes_and_targets():
    B, N, d = 4, 15, 5
    for v in tasks.OOD_VARIANTS:
        xs, ys, xq, yq = tasks.sample_ood(v, B, N, d, _tasks_gen())
        assert xs.shape == xq.shape == (B, N, d) and ys.shape == yq.shape == (B, N, 1), v
        assert all(t.dtype == torch.float32 for t in (xs, ys, xq, yq)), v
        if v not in ("quadrants", "orthogonal", "seen_points"):
            assert torch.equal(xq, xs) and torch.equal(yq, ys), v
        if v not in ("noisy_y", "half_subspace"):  # noise-free, full rank: the queries use the context's w
            w = torch.linalg.lstsq(xs.double(), ys.double()).solution
            assert torch.allclose(xq.double() @ w, yq.double(), atol=1e-3), v
    xs, ys, _, _ = tasks.sample_ood("noisy_y", B, N, d, _tasks_gen(), noise_std=1.0)
    w = torch.linalg.lstsq(xs, ys).solution
    assert (ys - xs @ w).abs().max() > 0.1  # noise really is there

def test_tasks_ood_orthogonal():
    B, N, d = 4, 9, 6
    xs, _, xq, _ = tasks.sample_ood("orthogonal", B, N, d, _tasks_gen())
    assert torch.allclose(xq.norm(dim=-1), xs.norm(dim=-1), rtol=1e-4)
    for i in range(1, d):
        cos = (xs[:, :i] @ xq[:, i].unsqueeze(-1)).squeeze(-1) / (xs[:, :i].norm(dim=-1) * xq[:, i].norm(dim=-1, keepdim=True))
        assert cos.abs().max() < 1e-4, i
    assert torch.equal(xq[:, 0], xs[:, 0]) and torch.equal(xq[:, d:], xs[:, d:])  # empty complement: raw x

def test_tasks_ood_seen_points_and_quadrants():
    B, N, d = 32, 12, 4
    xs, _, xq, _ = tasks.sample_ood("seen_points", B, N, d, _tasks_gen())
    assert torch.equal(xq[:, 0], xs[:, 0])
    for i in range(1, N):
        same = (xs[:, :i] == xq[:, i : i + 1]).all(dim=-1)  # (B, i)
        assert (same.sum(dim=1) == 1).all(), i
    # a random earlier point, not a fixed one: 32 prompts at i = 11 hit at least 5 of the 11 indices
    assert len(set(same.float().argmax(dim=1).tolist())) >= 5
    xs, _, xq, _ = tasks.sample_ood("quadrants", B, N, d, _tasks_gen())
    s = torch.sign(xs)
    assert (s == s[:, :1]).all()  # one orthant per prompt
    assert torch.equal(xs.abs(), xq.abs())  # the context is the query's Gaussian folded into it
    assert (torch.sign(xq) != s).any(dim=-1).float().mean() > 0.5  # queries mostly outside that orthant

def test_tasks_ood_skewed_and_half_subspace_spectrum():
    B, N, d = 64, 64, 8
    xs = tasks.sample_ood("skewed", B, N, d, _tasks_gen())[0].reshape(-1, d).double()
    ev = torch.linalg.eigvalsh(xs.T @ xs / xs.shape[0]).flip(0)  # descending
    lam2 = 1.0 / torch.arange(1, d + 1, dtype=torch.float64) ** 2
    assert torch.allclose(ev, lam2 * d / lam2.sum(), rtol=0.2)
    xs = tasks.sample_ood("half_subspace", B, N, d, _tasks_gen())[0].reshape(-1, d).double()
    ev = torch.linalg.eigvalsh(xs.T @ xs / xs.shape[0]).flip(0)
    assert torch.allclose(ev[: d // 2], torch.full((d // 2,), 2.0, dtype=torch.float64), rtol=0.2)
    assert ev[d // 2 :].abs().max() < 1e-4

# -----------------------------------------------------------------------------
# train / config

import contextlib
import json
import random
import re
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.abspath(__file__))
TINY = ["--n_layer=1", "--n_embd=16", "--n_head=2", "--batch_size=8", "--max_iters=30", "--log_interval=1",
        "--eval_interval=10", "--ckpt_interval=5"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # tiny models: one thread is fastest and never oversubscribes shared cores


@pytest.fixture
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _run(out_dir, *args):
    """train.main in this process (tiny model); returns the final step"""
    return train.main([*TINY, f"--out_dir={out_dir}", *args])


def _python(*args, timeout=120):
    """a real process: `python train.py ...` (or a script given as args), in the repo"""
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout)


def _metrics(out_dir):
    """the logged sequence without wall-clock fields"""
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        return [{k: v for k, v in json.loads(line).items() if k not in ("time", "steps_per_s")} for line in f]


def _state(out_dir, name="ckpt.pt"):
    return train.load_checkpoint(os.path.join(out_dir, name))


def _same_tensors(a, b):
    """bitwise equality of two (nested) state dicts"""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same_tensors(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same_tensors(x, y) for x, y in zip(a, b))
    return a == b


def test_train_config_loader(tmp_path):
    cfg, explicit = train.load_config(["--learning_rate=1", "--out_dir=runs/1", "--task=mqar"])
    assert cfg["learning_rate"] == 1.0 and type(cfg["learning_rate"]) is float  # int -> float
    assert cfg["out_dir"] == "runs/1" and cfg["task"] == "mqar" and explicit == {"learning_rate", "out_dir", "task"}
    conf = tmp_path / "c.py"
    conf.write_text("import math\nn_embd = 2 ** 5\ndef helper(): pass\n")  # modules and helpers are not keys
    assert train.load_config([str(conf), "--n_head=8"])[0]["n_embd"] == 32
    with pytest.raises(train.UserError, match="did you mean 'n_embd'"):
        train.load_config(["--n_emdb=16"])
    conf.write_text("learning_rat = 1e-4\n")
    with pytest.raises(train.UserError, match="unknown config key 'learning_rat' in .*did you mean 'learning_rate'"):
        train.load_config([str(conf)])
    with pytest.raises(train.UserError, match="must be of type int"):
        train.load_config(["--n_embd=64.0"])
    # every preset composes with every task into a valid model config
    for arch in ("gpt2", "llama", "mamba", "llama_mamba", "mambaformer"):
        for task in ("linear_regression", "sparse_parity", "mqar"):
            train.validate(train.load_config([f"configs/{arch}.py", f"configs/{task}.py"])[0])


def test_study_configs_stand_alone_and_the_study_script_runs_each_once():
    # RESULTS.md promises `python train.py configs/study/<run>.py` reproduces each run, and results/study.sh trains them all
    names = sorted(f[:-3] for f in os.listdir(os.path.join(ROOT, "configs", "study")) if f.endswith(".py"))
    script = open(os.path.join(ROOT, "results", "study.sh")).read()
    assert len(names) >= 10
    for name in names:
        cfg = train.load_config([f"configs/study/{name}.py"])[0]
        assert cfg["out_dir"] == f"out/study/{name}", name
        ICLModel(train.validate(cfg))  # valid, and the small sizes build
        assert script.count(f"$C/{name}.py") == 1, f"results/study.sh must train {name} exactly once"
    assert set(re.findall(r"\$C/(\w+)\.py", script)) == set(names)


def test_train_overfits_fixed_batch(tmp_path, monkeypatch, one_thread):
    # the same 8 prompts every step: a working loop memorises them
    fixed = train.get_batch  # before patching
    monkeypatch.setattr(train, "get_batch", lambda cfg, step, rank, n, gen=None: fixed(cfg, 0, 0, n, gen))
    _run(tmp_path / "r", "--n_embd=32", "--n_head=4", "--learning_rate=3e-3", "--max_iters=150", "--eval_interval=150")
    losses = [r["loss"] for r in _metrics(tmp_path / "r") if "loss" in r]
    assert len(losses) == 150 and losses[-1] < 0.05 * losses[0], (losses[0], losses[-1])


def test_train_same_seed_is_bitwise_identical(tmp_path, one_thread):
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        _run(tmp_path / name, f"--seed={seed}", "--max_iters=12")
    a, b, c = (_state(tmp_path / n) for n in "abc")
    assert _same_tensors(a["model"], b["model"]) and _same_tensors(a["optimizer"], b["optimizer"])
    assert _metrics(tmp_path / "a") == _metrics(tmp_path / "b")
    assert not _same_tensors(a["model"], c["model"]) and _metrics(tmp_path / "a") != _metrics(tmp_path / "c")


def test_train_resume_after_interrupt_is_exact(tmp_path, monkeypatch, one_thread, capsys):
    # uninterrupted vs. SIGINT inside step 13 (graceful: the step finishes, a checkpoint is written) then --resume
    _run(tmp_path / "full")
    real = train.get_batch
    def interrupt(cfg, step, rank, n, gen=None):
        if step == 12 and gen is None and n == cfg["batch_size"]:
            os.kill(os.getpid(), signal.SIGINT)
        return real(cfg, step, rank, n, gen)
    monkeypatch.setattr(train, "get_batch", interrupt)
    assert _run(tmp_path / "cut") == 13
    assert "stopped at step 13" in capsys.readouterr().out and _state(tmp_path / "cut")["step"] == 13
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # main gave the handlers back
    monkeypatch.setattr(train, "get_batch", real)
    assert _run(tmp_path / "cut", "--resume=True") == 30
    full, cut = _state(tmp_path / "full"), _state(tmp_path / "cut")
    assert _same_tensors(full["model"], cut["model"]) and _same_tensors(full["optimizer"], cut["optimizer"])
    assert _metrics(tmp_path / "full") == _metrics(tmp_path / "cut")


def test_train_ranks_never_share_data():
    cfg = train.load_config([])[0]
    batches = [train.get_batch(cfg, step, rank, 4)[0] for step in range(3) for rank in range(4)]
    batches += [train.get_batch(cfg, 0, 0, 4, gen=train.batch_generator(cfg["seed"], -1 - i, 0))[0] for i in range(2)]  # val
    assert all(not torch.equal(a, b) for i, a in enumerate(batches) for b in batches[i + 1:])
    assert torch.equal(train.get_batch(cfg, 7, 1, 4)[1], train.get_batch(cfg, 7, 1, 4)[1])  # and each is reproducible


_DDP_WORKER = r'''
import os, sys, torch, torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
import train
from model import ICLModel
rank, store, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
cfg = train.load_config(["--n_layer=1", "--n_embd=16", "--n_head=2", "--batch_size=8", "--micro_batch_size=2"])[0]
torch.manual_seed(cfg["seed"])
model = DDP(ICLModel(train.validate(cfg, world_size=2)))
xs, ys = train.get_batch(cfg, 3, rank, 4)  # this rank's half of step 3's global batch
for m in range(2):  # two micro-batches, the first without the all-reduce: train.py's accumulation
    with model.no_sync() if m == 0 else torch.enable_grad():
        (train.icl_loss(model(xs[2 * m:2 * m + 2], ys[2 * m:2 * m + 2]), ys[2 * m:2 * m + 2], cfg["task"]) / 2).backward()
torch.save({n: p.grad for n, p in model.module.named_parameters()}, out)
# DDP's reducer holds the gloo group; a module global is freed only at interpreter exit, where gloo's threads can
# abort the process ("terminate called without an active exception", seen once in CI). Free it while alive.
dist.barrier()
del model
dist.destroy_process_group()
'''


def test_train_ddp_gradients_equal_single_process_on_union(tmp_path, one_thread):
    script = tmp_path / "worker.py"
    script.write_text(_DDP_WORKER)
    env = {**ENV, "PYTHONPATH": ROOT}
    procs = [subprocess.Popen([sys.executable, str(script), str(r), str(tmp_path / "store"), str(tmp_path / f"g{r}.pt")],
                              cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True) for r in range(2)]
    for p in procs:
        err = p.communicate(timeout=120)[1]  # (communicate: a chatty worker cannot fill the pipe and hang)
        assert p.returncode == 0, err
    cfg = train.load_config(["--n_layer=1", "--n_embd=16", "--n_head=2", "--batch_size=8"])[0]
    torch.manual_seed(cfg["seed"])
    model = train.ICLModel(train.validate(cfg))
    parts = [train.get_batch(cfg, 3, r, 4) for r in range(2)]
    xs, ys = (torch.cat(t) for t in zip(*parts))  # the union of the two ranks' batches
    train.icl_loss(model(xs, ys), ys, cfg["task"]).backward()
    for r in range(2):
        grads = torch.load(tmp_path / f"g{r}.pt")
        for n, p in model.named_parameters():
            assert torch.allclose(grads[n], p.grad, rtol=1e-5, atol=1e-7), n


def test_train_torchrun_two_processes(tmp_path, monkeypatch, one_thread):
    # a real 2-process gloo run end to end; its logged loss and grad norm (all-reduced) equal a single process's
    # on the union of the two ranks' batches, step after step (micro-batches of 2: accumulation under no_sync too)
    args = [*TINY, "--max_iters=3", "--micro_batch_size=2"]
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "train.py", *args,
                        f"--out_dir={tmp_path / 'ddp'}"], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "2 process(es)" in (tmp_path / "ddp" / "log.txt").read_text()
    real = train.get_batch
    def union(cfg, step, rank, n, gen=None):
        if gen is not None or n != cfg["batch_size"]:
            return real(cfg, step, rank, n, gen)
        return tuple(torch.cat(t) for t in zip(*(real(cfg, step, r, n // 2) for r in range(2))))
    monkeypatch.setattr(train, "get_batch", union)
    _run(tmp_path / "one", "--max_iters=3")
    ddp, one = _metrics(tmp_path / "ddp"), _metrics(tmp_path / "one")
    assert [r["step"] for r in ddp] == [1, 2, 3]
    for a, b in zip(ddp, one):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5) and a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)
    wd, w1 = _state(tmp_path / "ddp")["model"], _state(tmp_path / "one")["model"]
    assert all(torch.allclose(wd[k], w1[k], rtol=1e-4, atol=1e-6) for k in w1)

# -----------------------------------------------------------------------------
# Triton scan (interpreter)

needs_triton = pytest.mark.skipif(not (ssm_scan.HAS_TRITON and ssm_scan.INTERPRET), reason="needs triton's interpreter")
_tri = lambda *a, **kw: ssm_scan.selective_scan(*a, backend="triton", **kw)


@pytest.fixture
def tiny_tiles(monkeypatch):
    # chunks of 4 steps, blocks of 2 channels: several chunks and a partial channel block at interpreter-cheap shapes
    monkeypatch.setattr(ssm_scan, "_TILES", {k: (4, (2, 4), (2, 4)) for k in (True, False)})


def _tri_inputs(b=2, d=3, l=13, n=4, dtype=torch.float32, layout="bld", drop=(), delta_shift=None):
    # ssm_scan._case: u, delta, z transposed (b, l, d) activations, B and C slices of one (b, l, 2n) tensor
    x, g = ssm_scan._case(b, d, l, n, dtype, "cpu")
    x = {k: v.detach().to(torch.float64) if dtype == torch.float64 else v.detach() for k, v in x.items() if k not in drop}
    if layout == "bdl":  # time-contiguous (b, d, l) tensors
        x = {k: v.contiguous() if v.dim() == 3 else v for k, v in x.items()}
    if layout == "xz":  # u and z as halves of one (b, 2d, l) tensor: channel stride 1, time stride 2d
        x["u"], x["z"] = torch.cat([x["u"], x["z"]], 1).transpose(1, 2).contiguous().transpose(1, 2).chunk(2, 1)
    if delta_shift is not None:
        x["delta"] = x["delta"] + delta_shift
    return {k: v.requires_grad_() for k, v in x.items()}, g


def _tri_err(x, g, **kw):
    """max |triton - torch backend in fp64| / max |ref|, for out and the grads of every tensor in x"""
    x64 = {k: v.detach().double().requires_grad_() for k, v in x.items()}
    ref = ssm_scan._run(selective_scan_torch, x64, g.double(), **{k: v for k, v in kw.items() if k != "deterministic"})
    got = ssm_scan._run(_tri, x, g, **kw)
    assert [t.dtype for t in got] == [x["u"].dtype, *(v.dtype for v in x.values())]
    return [((a.double() - r).abs().max() / r.abs().max()).item() for a, r in zip(got, ref)]


@needs_triton
@pytest.mark.parametrize("dtype,layout,tol", [(torch.float32, "bld", 1e-5), (torch.float32, "bdl", 1e-5),
                                              (torch.float32, "xz", 1e-5), (torch.float64, "bld", 1e-12),
                                              (torch.bfloat16, "bld", 2e-2)])
def test_triton_scan_matches_reference(tiny_tiles, dtype, layout, tol):
    # 13 steps in chunks of 4 (the last partial), 3 channels in blocks of 2 (the last partial), strided views
    assert max(_tri_err(*_tri_inputs(dtype=dtype, layout=layout))) < tol


@needs_triton
@pytest.mark.parametrize("case", [dict(drop=("D", "z", "delta_bias"), delta_softplus=False), dict(drop=("z",)),
                                  dict(drop=("D", "delta_bias")), dict(l=3), dict(deterministic=True),
                                  dict(delta_shift=torch.tensor([25.0, -25.0]).repeat(7)[:13]), dict(delta_shift=-5.0)])
def test_triton_scan_options(tiny_tiles, case):
    # optional inputs absent, softplus off, L shorter than a chunk, fixed-order dB/dC; softplus above 20 (identity) and
    # at e^-25, and near mamba's dt init, delta + bias ~ -7 (where log(1 + w) alone is off by ~1e-4). dA gets 1e-4: with
    # dt = 25, a ~ 0 and h - x (= a h[t-1], the CUDA kernel's trick) cancels to fp32 rounding of x
    kw = {k: case.pop(k) for k in ("delta_softplus", "deterministic") if k in case}
    tol = 1e-4 if torch.as_tensor(case.get("delta_shift", 0.0)).max() > 20 else 1e-5
    assert max(_tri_err(*_tri_inputs(**case), **kw)) < tol


@needs_triton
def test_triton_scan_deterministic_and_default_tiles():
    # the real tiles (2 chunks of 32, a partial block of 32 channels); deterministic=True is bitwise repeatable (trivially
    # so in the interpreter, which runs atomics in order: the GPU is where it matters)
    x, g = _tri_inputs(b=1, d=5, l=37, n=2)
    runs = [ssm_scan._run(_tri, x, g, deterministic=True) for _ in range(2)]
    assert all(torch.equal(a, b) for a, b in zip(*runs)) and max(_tri_err(x, g)) < 1e-5


@needs_triton
def test_triton_scan_gradcheck(tiny_tiles):
    x, _ = _tri_inputs(b=1, d=3, l=9, n=2, dtype=torch.float64)  # 3 chunks, 2 channel blocks
    f = lambda *a: _tri(*a, delta_softplus=True)
    assert torch.autograd.gradcheck(f, tuple(x.values()), fast_mode=True)  # the full Jacobian: ~100 s interpreted


def test_triton_scan_dispatch(monkeypatch):
    # CPU tensors stay on torch even under TRITON_INTERPRET=1 (every test runs under it); the override reaches triton
    assert ssm_scan.resolve_backend("auto", torch.device("cpu")) == "torch"
    assert ssm_scan.resolve_backend("auto", torch.device("cuda")) == ("triton" if ssm_scan.HAS_TRITON else "torch")
    monkeypatch.setenv("SSM_SCAN_BACKEND", "triton")
    assert ssm_scan.resolve_backend("auto", torch.device("cpu")) == "triton"

# -----------------------------------------------------------------------------
# baselines / evaluate
import json as _json, subprocess as _subprocess, sys as _sys
import baselines
import evaluate

_EV_ROOT = os.path.dirname(os.path.abspath(__file__))
_EV_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # tiny work: one thread is fastest and never oversubscribes shared cores


def _ev_run(*args):
    return _subprocess.run([_sys.executable, *args], cwd=_EV_ROOT, env=_EV_ENV, capture_output=True, text=True, timeout=300)


def _ev_prompts(task, B, N, d, seed=0, **kw):
    return tasks.sample(task, B, N, d, torch.Generator().manual_seed(seed), **kw)


def _ev_ckpt(path, n_dims=3, n_points=7, task="linear_regression", **model_kw):
    """a checkpoint in train.py's format around an untrained tiny model (no training needed to test evaluate)"""
    margs = dict(n_dims=n_dims, y_dim=tasks.y_dim(task, n_dims), n_positions=16, n_layer=1, n_embd=16, n_head=2, **model_kw)
    cfg = dict(task=task, n_dims=n_dims, n_points=n_points, arch="gpt2", **tasks.TASK_DEFAULTS)
    model = ICLModel(ModelConfig(**margs))
    os.makedirs(path, exist_ok=True)
    torch.save(dict(model=model.state_dict(), optimizer={}, step=0, config=cfg, model_args=margs), os.path.join(path, "ckpt.pt"))
    return str(path)


def test_score_exact_cases_and_paper_example():
    xs, ys = _ev_prompts("linear_regression", 256, 11, 5)
    err0 = evaluate.sq_err(torch.zeros_like(ys), ys, "linear_regression")
    err_ls = evaluate.sq_err(baselines.least_squares(xs, ys), ys, "linear_regression")
    assert evaluate.score(err_ls, err0, err_ls)["score"] == 1.0  # exactly
    assert evaluate.score(err0, err0, err_ls)["score"] == 0.0
    s = evaluate.score(err_ls, err0, err_ls)
    assert s["ci95"] == [s["score"] - 1.96 * s["se"], s["score"] + 1.96 * s["se"]] and s["se"] > 0
    # docs/paper.md §6: xi_0 = 20, xi_base = [20, 14, 8, 0], xi_model = [20, 15, 9, 1.5] -> 34.5 / 38 = 0.908
    row = lambda v: torch.tensor([v, v])  # two identical prompts: the means are the values themselves
    zero, base = row([20.0] * 4), row([20.0, 14, 8, 0])
    assert round(evaluate.score(row([20.0, 15, 9, 1.5]), zero, base)["score"], 3) == 0.908
    assert round(evaluate.score(row([30.0] * 4), zero, base)["score"], 2) == -1.05  # 10 worse than zero everywhere


def test_least_squares_curve_is_d_minus_i():
    d, N = 8, 17
    xs, ys = _ev_prompts("linear_regression", 4000, N, d)
    err = (baselines.least_squares(xs, ys) - ys).pow(2).mean((0, 2))  # noiseless: E = d - i below d, 0 from d on
    assert torch.allclose(err[:d], torch.arange(d, 0, -1.0), rtol=0.08)
    assert err[d:].max() < 1e-6


def test_least_squares_matches_numpy_lstsq():
    np = pytest.importorskip("numpy")
    cases = [_ev_prompts("linear_regression", 6, 14, 5, noise_std=0.5),  # noisy: the ill-conditioned square systems matter
             _ev_prompts("sparse_parity", 6, 30, 6),                      # repeated x's: rank-deficient prefixes
             _ev_prompts("mqar", 4, 9, 3)]                                # y_dim > 1
    xs, ys = _ev_prompts("linear_regression", 6, 14, 5, seed=1)
    xs[..., 3:] = 0                                                       # inactive dims (the curriculum)
    cases.append((xs, ys))
    for xs, ys in cases:
        xq = xs + 0.1 * torch.randn(xs.shape, generator=torch.Generator().manual_seed(2))
        for q in (None, xq):
            p = baselines.least_squares(xs, ys, q).double().numpy()
            X, Y, Q = xs.double().numpy(), ys.double().numpy(), (xs if q is None else q).double().numpy()
            ref = np.zeros_like(p)
            for b in range(X.shape[0]):
                for i in range(1, X.shape[1]):
                    ref[b, i] = Q[b, i] @ np.linalg.lstsq(X[b, :i], Y[b, :i], rcond=None)[0]
            assert np.abs(p - ref).max() <= 1e-5 * max(1.0, np.abs(ref).max())


@pytest.mark.parametrize("alpha", [1e-3, 0.05])
def test_lasso_matches_sklearn(alpha):
    sklearn = pytest.importorskip("sklearn.linear_model")
    import warnings
    xs, ys = _ev_prompts("sparse_linear_regression", 8, 20, 8, sparsity=2)
    p = baselines.lasso(xs, ys, alpha=alpha)
    X, Y = xs.double().numpy(), ys.double().numpy()
    for b in range(8):
        for i in range(1, 20):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # sklearn warns when it does not converge: those fits are skipped
                fit = sklearn.Lasso(alpha=alpha, fit_intercept=False, tol=1e-10, max_iter=100_000).fit(X[b, :i], Y[b, :i, 0])
            if fit.n_iter_ < 100_000:
                ref = float(fit.predict(X[b, i:i + 1])[0])
                assert abs(p[b, i, 0].item() - ref) <= 1e-3 * max(abs(ref), 1e-2), (b, i)


def test_knn_averaging_retrieval_match_loops():
    xs, ys = _ev_prompts("linear_regression", 3, 9, 4)
    xq = torch.randn(xs.shape, generator=torch.Generator().manual_seed(3))
    knn, avg, ret = baselines.knn(xs, ys, xq), baselines.averaging(xs, ys, xq), baselines.retrieval_dict(xs, ys, xq)
    for b in range(3):
        for i in range(1, 9):
            dist = (xs[b, :i] - xq[b, i]).norm(dim=-1)
            near = dist.argsort()[:3]
            assert torch.allclose(knn[b, i], ys[b, near].mean(0), atol=1e-5)
            w = (xs[b, :i] * ys[b, :i]).mean(0)
            assert torch.allclose(avg[b, i], (xq[b, i] * w).sum(-1, keepdim=True), atol=1e-5)
            assert torch.equal(ret[b, i], ys[b, (xs[b, :i] @ xq[b, i]).argmax()])
    assert not knn[:, 0].any() and not avg[:, 0].any() and not ret[:, 0].any()


def test_retrieval_dict_exact_on_mqar_and_parity_bayes_learns():
    xs, ys = _ev_prompts("mqar", 64, 65, 20)
    err = evaluate.sq_err(baselines.retrieval_dict(xs, ys), ys, "mqar")
    assert err.shape == (64, 1) and err.max() == 0
    xs, ys = _ev_prompts("sparse_parity", 64, 40, 10)
    err = (baselines.parity_bayes(xs, ys) - ys).pow(2).mean((0, 2))
    assert err[0] == 1 and err[-10:].max() < 0.05  # 45 hypotheses: a couple of dozen pairs pin the subset down


def test_parity_prior_ignores_the_context_and_has_the_analytic_error():
    # the mean parity over all 45 subsets: products of distinct pairs are uncorrelated, so MSE = 1 - 1/45 everywhere
    xs, ys = _ev_prompts("sparse_parity", 2000, 8, 10)
    p = baselines.BASELINES["parity_prior"](xs, ys)
    assert torch.equal(p, baselines.parity_bayes(xs, -ys, context=False))  # the labels play no part
    err = (p - ys).pow(2).mean((0, 2))
    assert p[:, 0].abs().sum() > 0 and (err - (1 - 1 / 45)).abs().max() < 0.01, err


@pytest.mark.parametrize("name", ["zero", "least_squares", "averaging", "knn", "retrieval_dict", "parity_bayes", "lasso", "gd_mlp"])
def test_baselines_are_causal(name):
    kw = dict(steps=5, hidden=8) if name == "gd_mlp" else {}
    fn = lambda x, y, q=None: baselines.BASELINES[name](x, y, q, **kw)
    xs, ys = _ev_prompts("sparse_parity" if name == "parity_bayes" else "sparse_linear_regression", 4, 12, 6)
    p = fn(xs, ys)
    xs2, ys2 = xs.clone(), ys.clone()
    xs2[:, 7:], ys2[:, 7:] = -xs2[:, 7:], ys2[:, 7:] + 3  # change everything from pair 7 on
    assert p.shape == ys.shape and not p[:, 0].any()
    assert torch.allclose(fn(xs2, ys2)[:, :7], p[:, :7], rtol=1e-5, atol=1e-6)  # prediction i only sees pairs < i and x_i
    xq = xs.clone()
    xq[:, 5] = -xq[:, 5]  # a different query at position 5 changes prediction 5 only
    assert torch.allclose(fn(xs, ys, xq)[:, 6:], p[:, 6:], rtol=1e-5, atol=1e-6)


def test_gd_mlp_learns_an_easy_function():
    xs, ys = _ev_prompts("linear_regression", 8, 21, 2)
    for kw in (dict(steps=300), dict(steps=100, batch_size=100)):  # the paper's setting and the reference code's
        err = (baselines.gd_mlp(xs, ys, hidden=32, **kw) - ys).pow(2).mean((0, 2))
        assert err[-5:].mean() < 0.2 * ys.pow(2).mean()


def test_evaluate_bad_inputs(tmp_path, capsys):
    with pytest.raises(train.UserError, match="no checkpoints in"):
        evaluate.main([str(tmp_path / "nothing")])
    good = _ev_ckpt(tmp_path / "good")
    bad = _ev_ckpt(tmp_path / "bad")
    state = torch.load(os.path.join(bad, "ckpt.pt"), weights_only=True)
    state["model_args"]["norm"] = "batchnorm"  # an architecture this code does not know
    torch.save(state, os.path.join(bad, "ckpt.pt"))
    other = _ev_ckpt(tmp_path / "other", n_dims=4)
    with open(os.path.join(tmp_path, "trunc.pt"), "wb") as f:
        f.write(open(os.path.join(good, "ckpt.pt"), "rb").read()[:500])
    os.makedirs(tmp_path / "trunc")
    os.replace(os.path.join(tmp_path, "trunc.pt"), tmp_path / "trunc" / "ckpt.pt")
    for args, msg in [([bad], "cannot rebuild the model"), ([str(tmp_path / "trunc")], "not a readable checkpoint"),
                      ([good, "--task=mqar"], "y of dimension"), ([good, "--task=decision_tree", f"--baseline_run={other}"], "x of dimension 4"),
                      ([good, "--n_prompt=8"], "unknown option"), ([good, "--n_prompts=many"], "must be a int"),
                      ([good, "--task=regression"], "unknown task"), ([good, "--baselines=nope"], "unknown baseline"),
                      ([good, "--ood=all", "--task=decision_tree"], "OOD suite"), ([], "usage")]:
        with pytest.raises(train.UserError, match=msg):
            evaluate.main(args + ["--n_prompts=8", "--plot=False"] if args else [])
    r = _ev_run("evaluate.py", bad)
    assert r.returncode == 2 and r.stderr.strip().startswith("error:") and len(r.stderr.strip().splitlines()) == 1


def test_evaluate_writes_curves_scores_plots_and_table(tmp_path):
    run, base = _ev_ckpt(tmp_path / "runA"), _ev_ckpt(tmp_path / "runB")
    evaluate.main([run, base, "--n_prompts=96", "--batch_size=40", "--ood=quadrants,orthogonal", f"--out={tmp_path}/cmp/table"])
    res = _json.load(open(os.path.join(run, "eval_linear_regression.json")))
    assert res["score_baseline"] == "least_squares" and len(res["positions"]) == 7 and len(res["zero"]["mean"]) == 7
    assert all(math.isfinite(v) for c in [res["zero"], *res["baselines"].values(), *res["checkpoints"]] for v in c["mean"] + c["se"])
    assert res["baselines"]["least_squares"]["score"]["score"] == 1.0 and math.isfinite(res["score"]["score"])
    for v in ("quadrants", "orthogonal"):
        assert os.path.exists(os.path.join(run, f"eval_linear_regression_{v}.json"))
    assert os.path.getsize(os.path.join(run, "eval_linear_regression.png")) > 1000
    assert os.path.exists(tmp_path / "cmp" / "table_linear_regression.png")
    md = open(tmp_path / "cmp" / "table.md").read()
    assert "| runA |" in md and "| runB |" in md and "Sparse Parity" in md and "–" in md  # two gpt2 runs: rows by run name
    assert open(tmp_path / "cmp" / "table.csv").read().startswith("model,linear_regression,linear_regression_ci95")
    # the same prompts for every run
    assert _json.load(open(os.path.join(base, "eval_linear_regression.json")))["zero"] == res["zero"]
    evaluate.main([run, "--n_prompts=96", "--score_vs=averaging", "--plot=False"])  # another baseline for the score: its own file
    assert _json.load(open(os.path.join(run, "eval_linear_regression_vs_averaging.json")))["baselines"]["averaging"]["score"]["score"] == 1.0


def test_evaluate_end_to_end_after_train(tmp_path):
    out = str(tmp_path / "run")
    r = _ev_run("train.py", "--max_iters=4", "--ckpt_interval=2", "--n_layer=1", "--n_embd=16", "--n_head=2", "--batch_size=8",
                "--eval_interval=2", f"--out_dir={out}")
    assert r.returncode == 0, r.stderr
    r = _ev_run("evaluate.py", out, "--n_prompts=64", "--all_ckpts=True")
    assert r.returncode == 0, r.stderr
    res = _json.load(open(os.path.join(out, "eval_linear_regression.json")))
    assert [c["step"] for c in res["checkpoints"]][-2:] == [2, 4] and os.path.exists(os.path.join(out, "eval_linear_regression.png"))
    assert all(math.isfinite(c["score"]["score"]) for c in res["checkpoints"]) and "score vs least_squares" in r.stdout


# -----------------------------------------------------------------------------
# reliability

# the crash test's driver: imports torch and train once, then runs each attempt in a fork (a real process, SIGKILLed
# for real, without paying for a new interpreter each time) with one kill point patched in; reports as JSON
_DRIVER = r"""
import builtins, io, json, os, signal, sys, time, traceback
import torch, torch._dynamo  # (Adam imports dynamo: once, here)
import train
torch.set_num_threads(1)

def arm(kind, n):
    die = lambda: os.kill(os.getpid(), signal.SIGKILL)
    calls = [0]
    def nth():  # True on this process's n-th call of the patched function
        calls[0] += 1
        return calls[0] == n
    if kind in ("step", "sigterm", "sigint"):  # inside step n, after its batch is drawn, before its update
        real_batch = train.get_batch
        def get_batch(cfg, step, rank, k, gen=None):
            if step == n and gen is None and k == cfg["batch_size"]:
                die() if kind == "step" else os.kill(os.getpid(), signal.SIGTERM if kind == "sigterm" else signal.SIGINT)
            return real_batch(cfg, step, rank, k, gen)
        train.get_batch = get_batch
    elif kind == "save":  # halfway through writing the bytes of the n-th checkpoint
        real_save = torch.save
        def save(obj, f):
            if nth():
                buf = io.BytesIO()
                real_save(obj, buf)
                f.write(buf.getvalue()[:len(buf.getvalue()) // 2])
                f.flush()
                die()
            real_save(obj, f)
        torch.save = save
    elif kind in ("replace", "link"):  # a complete .tmp not yet renamed / ckpt.pt renamed, ckpt_<step>.pt not yet linked
        real = getattr(os, kind)
        setattr(os, kind, lambda *a: die() if nth() else real(*a))
    elif kind == "metrics":  # half of the n-th metrics row written
        class Half:
            def __init__(self, f): self.f = f
            def __enter__(self): return self
            def __exit__(self, *a): self.f.close()
            def write(self, s):
                if nth():
                    self.f.write(s[:len(s) // 2]); self.f.flush(); die()
                self.f.write(s)
        train.open = lambda p, m="r", *a: Half(builtins.open(p, m, *a)) if str(p).endswith(".jsonl") and m == "a" else builtins.open(p, m, *a)

plan, args, report = json.loads(sys.argv[1]), sys.argv[3:], []
for i, (kind, n, out_dir) in enumerate(plan):
    ckpt, r = os.path.join(out_dir, "ckpt.pt"), {"kind": kind, "n": n}
    r["resume"] = resume = os.path.exists(ckpt)
    if not resume and os.path.exists(out_dir):  # killed before its first checkpoint: what does --resume say?
        try:
            train.main([*args, f"--out_dir={out_dir}", "--resume=True"])
        except train.UserError as e:
            r["resume_error"] = str(e)
    log = os.path.join(sys.argv[2], f"attempt{i}.txt")
    t0, pid = time.time(), os.fork()
    if pid == 0:
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(fd, 1), os.dup2(fd, 2)
        code = 0
        try:
            arm(kind, n)
            train.main([*args, f"--out_dir={out_dir}", f"--resume={resume}"])
        except train.UserError as e:
            print(f"error: {e}"); code = 2
        except BaseException:
            traceback.print_exc(); code = 1
        sys.stdout.flush(), sys.stderr.flush()
        os._exit(code)
    if kind == "random":  # from outside, after n/1000 of the first attempt's duration: wherever the run happens to be
        time.sleep(n / 1000 * report[0]["secs"])
        os.kill(pid, signal.SIGKILL)  # (not yet reaped, so the pid is still ours even if it has just finished)
    status = os.waitpid(pid, 0)[1]
    r["secs"] = time.time() - t0
    r["signal"], r["code"] = os.WTERMSIG(status) if os.WIFSIGNALED(status) else 0, os.waitstatus_to_exitcode(status)
    r["out"] = open(log).read()[-2000:]
    try:
        r["step"] = train.load_checkpoint(ckpt)["step"] if os.path.exists(ckpt) else None
    except train.UserError as e:
        r["step"] = f"unreadable: {e}"
    report.append(r)
print(json.dumps(report))
"""

# 30 steps, a checkpoint every 5 and at step 0. In step order: SIGKILL while writing the very first checkpoint, mid-step,
# mid metrics row, mid checkpoint write of a resumed run, a complete .tmp not yet renamed, between the rename and the hard
# link, mid-step again, a second metrics row, mid-write of the last checkpoint, the last step; and SIGTERM / SIGINT.
# Then fresh runs killed once each from outside at a random moment (wherever it lands), and resumed
KILL_PLAN = [("save", 1), ("step", 3), ("metrics", 4), ("save", 2), ("sigterm", 9), ("replace", 2), ("link", 1), ("step", 17),
             ("metrics", 6), ("sigint", 22), ("save", 2), ("step", 28), ("step", 29)]
RANDOM_KILLS = [rng.randrange(1000) for rng in [random.Random(6)] for _ in range(6)]  # per mille of a whole run's time


def test_reliability_kill_at_any_moment(tmp_path):
    """after each kill the run resumes (or restarts, if it died before its first checkpoint); the final weights,
    optimizer state and logged loss sequence equal an uninterrupted run's bit for bit"""
    args = [*TINY, "--keep_last=2", "--keep_every=10"]
    ref, run = str(tmp_path / "ref"), str(tmp_path / "run")
    rand = [str(tmp_path / f"rand{i}") for i in range(len(RANDOM_KILLS))]
    (tmp_path / "driver.py").write_text(_DRIVER)
    plan = [("none", 0, ref)] + [(k, n, run) for k, n in KILL_PLAN] + [("none", 0, run)]
    plan += [a for n, d in zip(RANDOM_KILLS, rand) for a in (("random", n, d), ("none", 0, d))]
    p = subprocess.run([sys.executable, str(tmp_path / "driver.py"), json.dumps(plan), str(tmp_path), *args], cwd=ROOT,
                       env={**ENV, "PYTHONPATH": ROOT}, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    report = json.loads(p.stdout.strip().splitlines()[-1])
    good = -1  # the step of the last complete checkpoint
    for r in report[1:]:
        if r["kind"] == "random":
            assert r["signal"] == signal.SIGKILL or r["code"] == 0, r  # (it may have finished first)
            good = -1  # a fresh run
        elif r["kind"] in ("none", "sigterm", "sigint"):
            assert r["code"] == 0 and "error" not in r["out"], r
            assert r["kind"] == "none" or f"stopped at step {r['n'] + 1}" in r["out"] and "--resume=True" in r["out"], r
        else:
            assert r["signal"] == signal.SIGKILL, r
        assert r["step"] is None or isinstance(r["step"], int) and r["step"] >= good, r  # never partial, never older
        good = r["step"] if r["step"] is not None else good
        if "resume_error" in r:
            assert "no checkpoint at" in r["resume_error"], r
    assert good == 30 and not report[1]["resume"] and "resume_error" in report[2]  # the first kill: before any checkpoint
    for other in (run, *rand):
        a, b = _state(ref), _state(other)
        assert _same_tensors(a["model"], b["model"]) and _same_tensors(a["optimizer"], b["optimizer"])
        assert _metrics(ref) == _metrics(other) and len(_metrics(ref)) == 30
    # kept: every multiple of keep_every, plus the last keep_last others (the interrupted run also has its stop points)
    assert sorted(f for f in os.listdir(ref) if f.startswith("ckpt_")) == [f"ckpt_{s:07d}.pt" for s in (0, 10, 15, 20, 25, 30)]
    kept = [int(f[5:12]) for f in os.listdir(run) if re.fullmatch(r"ckpt_\d+\.pt", f)]
    assert {0, 10, 20, 30} <= set(kept) and len([s for s in kept if s % 10]) <= 2
    assert all(_state(run, f"ckpt_{s:07d}.pt")["step"] == s for s in kept)


def test_reliability_nonfinite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    run = tmp_path / "nan"
    r = _python("train.py", *TINY, "--learning_rate=1e30", "--ckpt_interval=1", f"--out_dir={run}")
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    m = re.search(r"non-finite loss .* in step (\d+), before its update; the last good checkpoint (\S+) \(step (\d+)\) is intact",
                  r.stderr)
    assert m, r.stderr
    ckpt = train.load_checkpoint(m.group(2))
    assert ckpt["step"] == int(m.group(3)) == int(m.group(1)) - 1
    assert all(torch.isfinite(t).all() for t in ckpt["model"].values())
    assert _same_tensors(ckpt["model"], _state(run, f"ckpt_{ckpt['step']:07d}.pt")["model"])
    assert max(r["step"] for r in _metrics(run)) == ckpt["step"]


def _malformed_cases(tmp):
    """(argv, the message must match) for a few hundred malformed configs: every key with values of the wrong type
    and out of range, unknown names, bad syntax, inconsistent combinations, broken config files"""
    cases = []
    for key, default in train.DEFAULTS.items():
        wrong_type = {bool: ["1", "yes", "true", "'True'", "", "None"], int: ["1.5", "abc", "True", "", "[1]", "None", "'3'",
                      "10**3", "1e400", "{}"], float: ["abc", "True", "[]", "None", "1j", "'0.1'"], str: []}[type(default)]
        cases += [([f"--{key}={v}"], f"{key} must be of type") for v in wrong_type]
        if key in train.POSITIVE + train.NONNEG:
            low = ["0", "-1"] if key in train.POSITIVE else ["-1"]
            high = [str(train.UPPER[key] + 1)] if key in train.UPPER else ["9" * 30] if type(default) is int else []
            cases += [([f"--{key}={v}"], f"{key} must be") for v in low + high + (["-1e400", "1e400"] if type(default) is float else [])]
        if key in train.CHOICES:
            cases += [([f"--{key}={v}"], f"{key}=.* is not one of") for v in ("nonexistent", "", default.upper(), " " + default)]
    cases += [([f"--{k}={v}"], f"{k} must be") for k in ("learning_rate", "ffn_mult") for v in ("0", "-1e-3", "1e400")]
    cases += [([f"--{k}={v}"], f"{k} must be in") for k in ("beta1", "beta2") for v in ("1", "-0.1", "1.5")]
    cases += [([f"--device={v}"], "device=") for v in ("tpu", "cuda:x", "CPU", "", "cpu:0", "cuda:-1")]
    cases += [([a], m) for a, m in (("--n_embd", "--key=value"), ("--=3", "unknown config key ''"), ("---n_embd=3", "unknown"),
              ("--unknown_key=1", "unknown config key"), ("--n_emdb=16", "did you mean 'n_embd'"), ("-n_embd=3", "not found"),
              ("n_embd=3", "not found"), ("configs/gtp2.py", "not found"), (str(tmp), "not found"))]
    cases += [(a, m) for a, m in (
        (["--n_embd=15", "--n_head=2"], "not divisible"), (["--n_points=142"], "learned position table"),
        (["--batch_size=10", "--micro_batch_size=3"], "split evenly"), (["--micro_batch_size=128"], "split evenly"),
        (["--task=mqar", "--n_points=1"], "mqar needs n_points >= 2"), (["--task=sparse_parity", "--parity_k=6"], "parity_k"),
        (["--task=sparse_parity", "--curriculum=True", "--curriculum_dims_start=1"], "parity_k"),
        (["--task=sparse_parity", "--noise_std=0.1"], "noise_std"), (["--task=mqar", "--noise_std=0.1"], "noise_std"),
        (["--pos=rope", "--n_embd=12", "--n_head=4"], "RoPE needs an even head size"), (["--layer_pattern=AX"], "layer_pattern"),
        (["--layer_pattern="], "layer_pattern"), (["--n_embd=100000000000000"], "cannot build this model"),
        (["--batch_size=100000000000000"], "cannot build this model or held-out set"),
        (["--n_dims=100000000000000", "--pos=rope"], "config: "), (["--resume=True"], "no checkpoint at"),
        (["--device=cuda:7"], "CUDA device"), (["configs/gpt2.py", "configs/mqar.py", "--n_points=1"], "mqar needs"))]
    files = {"syntax.py": ("n_embd = = 3\n", "failed to run: SyntaxError"), "unknown.py": ("n_emb = 3\n", "did you mean"),
             "type.py": ("n_embd = '64'\n", "must be of type int"), "raise.py": ("raise ValueError('boom')\n", "ValueError: boom"),
             "exit.py": ("import sys\nsys.exit(0)\n", "SystemExit"), "list.py": ("n_embd = [64]\n", "must be of type int"),
             "float.py": ("n_embd = 64.0\n", "must be of type int"), "nan.py": ("learning_rate = float('nan')\n", "learning_rate"),
             "inf.py": ("learning_rate = float('inf')\n", "learning_rate"), "imp.py": ("import no_such_module_xyz\n", "ModuleNotFound"),
             "task.py": ("task = 'regression'\n", "task='regression' is not one of"), "big.py": ("n_layer = 10**100\n", "n_layer"),
             "neg.py": ("batch_size = -64\n", "batch_size must be"), "bytes.py": (b"\xff\xfe\x00\x81", "failed to run")}
    for name, (text, m) in files.items():
        (tmp / name).write_bytes(text if isinstance(text, bytes) else text.encode())
        cases.append(([str(tmp / name)], m))
    return cases


def test_reliability_config_fuzz(tmp_path, monkeypatch):
    """every malformed config ends in one UserError line naming the problem, and nothing is written"""
    monkeypatch.chdir(tmp_path)  # a default out_dir would land here
    (tmp_path / "configs").symlink_to(os.path.join(ROOT, "configs"))
    cases = _malformed_cases(tmp_path)
    assert len(cases) > 300
    for i, (argv, pattern) in enumerate(cases):
        with pytest.raises(train.UserError, match=pattern) as e:
            train.main([f"--out_dir=run{i}", "--max_iters=1", *argv])
        assert "\n" not in str(e.value)
    assert sorted(os.listdir(tmp_path)) == sorted(["configs", *{"syntax.py", "unknown.py", "type.py", "raise.py", "exit.py",
        "list.py", "float.py", "nan.py", "inf.py", "imp.py", "task.py", "big.py", "neg.py", "bytes.py"}])  # nothing written
    # a sample through real processes (`python train.py ...`, forked from one interpreter that imported torch once):
    # one line on stderr, exit code 2, nothing on stdout, no traceback, nothing written
    sample = [[f"--out_dir={tmp_path / f'p{i}'}", *a] for i, (a, _) in enumerate(cases[::len(cases) // 12])]
    sample += [[f"--out_dir={tmp_path / 'big'}", "--n_embd=100000000000000"], [str(tmp_path / "exit.py")]]
    (tmp_path / "cli.py").write_text(_CLI_FORKS)
    p = subprocess.run([sys.executable, str(tmp_path / "cli.py"), json.dumps(sample), str(tmp_path)], cwd=ROOT,
                       env={**ENV, "PYTHONPATH": ROOT}, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    for argv, (code, out, err) in zip(sample, json.loads(p.stdout)):
        assert code == 2 and out == "" and err.startswith("error: ") and err.count("\n") == 1, (argv, code, out, err)
    assert not any(f.startswith("p") or f == "big" for f in os.listdir(tmp_path))


# runs `python train.py ARGS` for each ARGS in a fork of one interpreter (the real __main__ block, real exit codes)
_CLI_FORKS = r"""
import json, os, runpy, sys
import torch, torch._dynamo, model, tasks  # imported once, before the forks
results = []
for i, argv in enumerate(json.loads(sys.argv[1])):
    out, err = (os.path.join(sys.argv[2], f"cli{i}.{s}") for s in ("out", "err"))
    pid = os.fork()
    if pid == 0:
        os.dup2(os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), 1), os.dup2(os.open(err, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), 2)
        sys.argv, code = ["train.py", *argv], 0
        try:
            runpy.run_path("train.py", run_name="__main__")
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        sys.stdout.flush(), sys.stderr.flush()
        os._exit(code)
    results.append([os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), open(out).read(), open(err).read()])
print(json.dumps(results))
"""


def test_reliability_bad_checkpoints(tmp_path, one_thread):
    """truncated, bit-flipped, garbage, empty, foreign and malicious files, another architecture, a config change:
    one clear message each, nothing overwritten, no pickled code run"""
    good = tmp_path / "good"
    _run(good, "--max_iters=5")
    blob = (good / "ckpt.pt").read_bytes()
    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'PWNED'}",))
    import pickle, zipfile
    with zipfile.ZipFile(good / "ckpt.pt") as z:  # flip one byte inside a tensor's data: the zip CRC catches it
        off = next(i for i in z.infolist() if "/data/" in i.filename and i.file_size > 64).header_offset
    flip = bytearray(blob)
    flip[off + 30 + int.from_bytes(blob[off + 26:off + 28], "little") + int.from_bytes(blob[off + 28:off + 30], "little") + 16] ^= 0xFF
    foreign = tmp_path / "foreign.pt"
    variants = {"truncated": (blob[:len(blob) // 2], "truncated or corrupted"), "flipped": (bytes(flip), "checksum mismatch"),
                "garbage": (os.urandom(1000), "truncated or corrupted"), "empty": (b"", "truncated or corrupted"),
                "text": (b"hello", "truncated or corrupted")}
    for name, obj, m in (("tensor", torch.ones(3), "not a checkpoint of this project"),
                         ("state_dict", _state(good)["model"], "missing .*optimizer"),
                         ("evil", {"model": Evil()}, "safe loading refuses"),
                         ("bad_step", {**_state(good), "step": "5"}, "malformed")):
        torch.save(obj, foreign)
        variants[name] = (foreign.read_bytes(), m)
    variants["raw_pickle"] = (pickle.dumps(Evil()), "truncated or corrupted")
    other = tmp_path / "other"
    _run(other, "--max_iters=1", "--n_embd=32")  # another architecture, and a tampered config that no longer fits it
    variants["other_arch"] = (None, "does not fit this model")
    for name, (data, m) in variants.items():
        d = tmp_path / name
        d.mkdir()
        if data is None:
            ck = _state(other)
            torch.save({**ck, "config": {**ck["config"], "n_embd": 16}}, d / "ckpt.pt")
        else:
            (d / "ckpt.pt").write_bytes(data)
        before = (d / "ckpt.pt").read_bytes()
        with pytest.raises(train.UserError, match=m) as e:
            train.main([f"--out_dir={d}", "--resume=True"])
        assert "\n" not in str(e.value) and os.listdir(d) == ["ckpt.pt"] and (d / "ckpt.pt").read_bytes() == before, name
    assert not (tmp_path / "PWNED").exists()
    # resuming with a changed model or data key is refused unless asked; the refusal changes nothing
    with pytest.raises(train.UserError, match=r"resume would change the run .*n_embd: 16 -> 32.*allow_config_change"):
        _run(good, "--resume=True", "--n_embd=32")
    with pytest.raises(train.UserError, match="does not fit this model"):
        _run(good, "--resume=True", "--n_embd=32", "--allow_config_change=True")
    assert (good / "ckpt.pt").read_bytes() == blob
    # a new run never overwrites a run directory (or a file)
    with pytest.raises(train.UserError, match="already holds a run"):
        _run(good)
    (tmp_path / "afile").write_text("x")
    with pytest.raises(train.UserError, match="already holds a run"):
        _run(tmp_path / "afile")
    assert (good / "ckpt.pt").read_bytes() == blob and (tmp_path / "afile").read_text() == "x"


def _children(pid):
    """pids of the live child processes of pid (Linux /proc)"""
    kids = []
    for d in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError, ValueError, IndexError), open(f"/proc/{d}/stat") as f:
            if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                kids.append(int(d))
    return kids


def _wait_for_rows(run, rows, procs, timeout=120):
    deadline = time.time() + timeout
    while not ((run / "metrics.jsonl").exists() and (run / "metrics.jsonl").read_text().count("\n") >= rows):
        assert all(p.poll() is None for p in procs) and time.time() < deadline, "the run did not get going"
        time.sleep(0.2)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the worker through /proc")
def test_reliability_oom_mid_run_is_one_line_and_resumable(tmp_path, monkeypatch, one_thread):
    # running out of memory at step 7 (a longer curriculum stage, a bigger eval): one line naming it, the step-6 checkpoint intact
    real, calls = train.icl_loss, []
    def oom(pred, ys, task):
        calls.append(1)
        if len(calls) == 8:  # the step-0 held-out loss, then steps 0..6 train
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(pred, ys, task)
    monkeypatch.setattr(train, "icl_loss", oom)
    with pytest.raises(train.UserError, match=r"failed at step 7 \(out of memory: try a smaller micro_batch_size\); "
                                              r"last checkpoint .*ckpt\.pt \(step 6\): CUDA out of memory"):
        _run(tmp_path / "r", "--ckpt_interval=2", "--eval_interval=1000", "--max_iters=10")
    assert train.load_checkpoint(str(tmp_path / "r" / "ckpt.pt"))["step"] == 6
    monkeypatch.setattr(train, "icl_loss", real)
    assert _run(tmp_path / "r", "--ckpt_interval=2", "--eval_interval=1000", "--max_iters=10", "--resume=True") == 10


def test_reliability_ddp_dead_rank_takes_the_job_down(tmp_path):
    """torchrun, 2 gloo ranks: rank 1 is SIGKILLed mid-run; the job ends (non-zero, with a message) instead of hanging,
    and the last checkpoint is intact"""
    run = tmp_path / "ddp"
    with open(tmp_path / "out.txt", "w") as log:  # its own session, so that a failing test can end all of it
        p = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "train.py",
                              *TINY, "--max_iters=100000", "--ddp_timeout=20", f"--out_dir={run}"], cwd=ROOT, env=ENV,
                             stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_for_rows(run, 10, [p])
        workers = [c for c in _children(p.pid) if "\0RANK=1\0" in "\0" + open(f"/proc/{c}/environ").read()]
        assert len(workers) == 1
        os.kill(workers[0], signal.SIGKILL)
        p.wait(timeout=90)
    finally:
        with contextlib.suppress(OSError):
            os.killpg(p.pid, signal.SIGKILL)  # torchrun's session: whatever of it is left
    out = (tmp_path / "out.txt").read_text()
    assert p.returncode != 0 and ("error: process 0 failed at step" in out or "FAILED" in out), out[-3000:]
    assert _state(run)["step"] >= 5


def test_reliability_ddp_hung_rank_times_out(tmp_path):
    """rank 1 stops answering (SIGSTOP) mid-run: rank 0 gives up after ddp_timeout with one line naming the step and
    the last checkpoint, instead of waiting forever (both started the way torchrun starts them: RANK, WORLD_SIZE, ...)"""
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    run, procs = tmp_path / "ddp", []
    for r in range(2):
        with open(tmp_path / f"err{r}.txt", "w") as err:
            procs.append(subprocess.Popen(
                [sys.executable, "train.py", *TINY, "--max_iters=100000", "--ddp_timeout=5", f"--out_dir={run}"], cwd=ROOT,
                stdout=subprocess.DEVNULL, stderr=err, env={**ENV, "RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": "2",
                                                           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}))
    try:
        _wait_for_rows(run, 10, procs)
        procs[1].send_signal(signal.SIGSTOP)
        t0 = time.time()
        assert procs[0].wait(timeout=60) == 2 and time.time() - t0 < 60
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    err = (tmp_path / "err0.txt").read_text()
    assert re.fullmatch(r"error: process 0 failed at step \d+ .*last checkpoint \S+ \(step \d+\): .*\n", err), err
    assert _state(run)["step"] >= 5

# -----------------------------------------------------------------------------
# README quick start: run the README's own first command, shortened, so the README cannot rot

def test_readme_quickstart_runs(tmp_path):
    import re, subprocess, sys
    readme = open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "README.md")).read()
    section = re.search(r"## Quick start(.*?)\n## ", readme, re.S).group(1)
    line = next(l for l in section.splitlines() if l.startswith("python train.py"))
    assert line.count("out/quickstart") == 2  # trains into the directory it then evaluates
    line = line.replace("out/quickstart", str(tmp_path / "qs"))
    line = line.replace("python train.py", f"{sys.executable} train.py --max_iters=20 --eval_interval=10 --log_interval=10")
    line = line.replace("python evaluate.py", f"{sys.executable} evaluate.py --n_prompts=64")
    r = subprocess.run(line, shell=True, capture_output=True, text=True, timeout=600,
                       cwd=os.path.dirname(os.path.abspath(__file__)), env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    files = os.listdir(tmp_path / "qs")
    assert "ckpt.pt" in files and any(f.endswith(".png") for f in files) and any(f.startswith("eval_") and f.endswith(".json") for f in files)
    assert re.search(r"score vs \w+ -?\d", r.stdout + r.stderr)
