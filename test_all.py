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
        monkeypatch.setattr(ssm_scan, "_chunk_len", lambda b, d, n, l: chunk)
    x = {k: v.requires_grad_() for k, v in _scan_inputs(l=8).items()}
    f = lambda *a: selective_scan_torch(*a, delta_softplus=True)
    assert torch.autograd.gradcheck(f, tuple(x.values()))


@pytest.mark.parametrize("opts", [dict(), dict(D=None), dict(z=None), dict(delta_bias=None), dict(delta_softplus=False)])
def test_scan_reference_matches_naive_fp32(opts):
    x = {k: v.float().requires_grad_() for k, v in _scan_inputs(b=2, d=5, l=37, n=8).items()}
    kw = {**x, "delta_softplus": True, **opts}
    outs = [f(**kw) for f in (selective_scan_torch, selective_scan_naive)]
    g = torch.randn_like(outs[0])
    wrt = [v for k, v in x.items() if kw.get(k) is not None]
    grads = [torch.autograd.grad(o, wrt, g) for o in outs]
    assert torch.allclose(outs[0], outs[1], rtol=1e-5, atol=1e-5)
    for a, b in zip(*grads):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-4)


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

# -----------------------------------------------------------------------------
# Triton scan (interpreter)

needs_triton = pytest.mark.skipif(not (ssm_scan.HAS_TRITON and ssm_scan.INTERPRET), reason="needs triton's interpreter")


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
    got = ssm_scan._run(ssm_scan.selective_scan_triton, x, g, **kw)
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
                                  dict(delta_shift=torch.tensor([25.0, -25.0, 0.0]).repeat(5)[:13])])
def test_triton_scan_options(tiny_tiles, case):
    # optional inputs absent, softplus off, L shorter than a chunk, fixed-order dB/dC, softplus's two outer branches
    # (> 20: identity; e^-25: where log(1 + w) would round to 0)
    kw = {k: case.pop(k) for k in ("delta_softplus", "deterministic") if k in case}
    assert max(_tri_err(*_tri_inputs(**case), **kw)) < 1e-5


@needs_triton
def test_triton_scan_deterministic_and_default_tiles():
    # the real tiles (2 chunks of 32, a partial block of 32 channels); deterministic=True is bitwise repeatable
    x, g = _tri_inputs(b=1, d=5, l=37, n=2)
    runs = [ssm_scan._run(ssm_scan.selective_scan_triton, x, g, deterministic=True) for _ in range(2)]
    assert all(torch.equal(a, b) for a, b in zip(*runs)) and max(_tri_err(x, g)) < 1e-5


@needs_triton
def test_triton_scan_gradcheck(tiny_tiles):
    x, _ = _tri_inputs(b=1, d=3, l=9, n=2, dtype=torch.float64)  # 3 chunks, 2 channel blocks
    f = lambda *a: ssm_scan.selective_scan_triton(*a, delta_softplus=True)
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
from model import ICLModel, ModelConfig

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
    # the same prompts for every run: two identical models give identical curves
    assert _json.load(open(os.path.join(base, "eval_linear_regression.json")))["zero"] == res["zero"]


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
