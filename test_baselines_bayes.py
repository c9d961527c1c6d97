"""
The Bayes baselines (sparse_linear_bayes, tree_bayes) and the tuned Lasso: against brute force on tiny cases,
and as the error floor of every other baseline on prompts of their task's prior.
    OMP_NUM_THREADS=1 python -m pytest -q test_baselines_bayes.py
"""
import itertools
import math

import pytest
import torch

import baselines
import tasks


def prompts(task, B, N, d, seed=0, **kw):
    return tasks.sample(task, B, N, d, torch.Generator().manual_seed(seed), **kw)


def gaussian_log_density(y, C):  # log N(y; 0, C), explicitly
    L = torch.linalg.cholesky(C)
    z = torch.linalg.solve_triangular(L, y[:, None], upper=False)[:, 0]
    return -0.5 * (z @ z) - L.diagonal().log().sum() - 0.5 * len(y) * math.log(2 * math.pi)


def mixture(log_w, f):  # the posterior mean from each hypothesis' log evidence and answer
    return (torch.tensor(log_w).softmax(0) * torch.tensor(f)).sum().item()

# -----------------------------------------------------------------------------
# sparse linear: brute force on the full i x i covariances

def sparse_brute(xs, ys, xq, k, noise):
    """every support S, the evidence N(y; 0, X_S X_S^T + noise I) and the kernel-form posterior mean
    w_S = X_S^T (X_S X_S^T + noise I)^-1 y, one prompt and prefix at a time"""
    X, Y, Q = xs.double(), ys.double()[..., 0], xq.double()
    preds = torch.zeros(Y.shape, dtype=torch.float64)
    for b, i in itertools.product(range(X.shape[0]), range(1, X.shape[1])):
        log_w, f = [], []
        for S in itertools.combinations(range(X.shape[-1]), k):
            XS = X[b, :i, list(S)]                                   # (i, k)
            C = XS @ XS.T + noise * torch.eye(i, dtype=torch.float64)
            log_w.append(gaussian_log_density(Y[b, :i], C).item())
            f.append((Q[b, i, list(S)] @ (XS.T @ torch.linalg.solve(C, Y[b, :i]))).item())
        preds[b, i] = mixture(log_w, f)
    return preds


@pytest.mark.parametrize("d,k", [(3, 1), (4, 2), (4, 3)])
@pytest.mark.parametrize("noise", [1e-2, 1e-4])
def test_sparse_linear_bayes_is_the_brute_force_posterior_mean(d, k, noise):
    xs, ys = prompts("sparse_linear_regression", 3, 8, d, seed=d + k, sparsity=k)
    ys = ys + noise ** 0.5 * torch.randn(ys.shape, generator=torch.Generator().manual_seed(1))
    xq = torch.randn(xs.shape, generator=torch.Generator().manual_seed(2))
    for q in (xs, xq):
        fast = baselines.sparse_linear_bayes(xs, ys, q, k=k, noise=noise).double()[..., 0]
        assert torch.allclose(fast, sparse_brute(xs, ys, q, k, noise), rtol=1e-4, atol=1e-5)


def sparse_limit(xs, ys, k):
    """the noiseless posterior mean: at i <= k every support fits (weights N(y; 0, X_S X_S^T), means the
    min-norm solutions on S); from i = k + 1 on only the true support does, and the answer is y itself"""
    X, Y = xs.double(), ys.double()[..., 0]
    preds = Y.clone()
    preds[:, 0] = 0
    for b, i in itertools.product(range(X.shape[0]), range(1, k + 1)):
        log_w, f = [], []
        for S in itertools.combinations(range(X.shape[-1]), k):
            XS = X[b, :i, list(S)]
            log_w.append(gaussian_log_density(Y[b, :i], XS @ XS.T).item())
            f.append((X[b, i, list(S)] @ torch.linalg.pinv(XS) @ Y[b, :i]).item())
        preds[b, i] = mixture(log_w, f)
    return preds


@pytest.mark.parametrize("d,k", [(4, 1), (4, 2), (5, 3)])
def test_sparse_linear_bayes_default_is_the_noiseless_limit(d, k):
    xs, ys = prompts("sparse_linear_regression", 4, 9, d, seed=10 + d + k, sparsity=k)
    fast = baselines.sparse_linear_bayes(xs, ys, k=k).double()[..., 0]
    assert torch.allclose(fast, sparse_limit(xs, ys, k), rtol=1e-4, atol=1e-5)
    assert (fast[:, k + 1:] - ys[:, k + 1:, 0]).abs().max() < 1e-5  # the support is identified from k + 1 on

# -----------------------------------------------------------------------------
# decision trees: brute force over every tree, with leaf noise s^2 -> 0 (no consistency rule assumed)

def tree_brute(xs, ys, xq, depth, s2=1e-12):
    """every assignment of split coordinates; y | T ~ N(0, A A^T + s2 I) with A the points' leaf one-hots, the
    query's leaf value's posterior mean A_q^T (A A^T + s2 I)^-1 y; mixed by the trees' evidence"""
    X, Y, Q = xs.double(), ys.double()[..., 0], xq.double()
    B, N, d = X.shape
    inner = 2 ** depth - 1

    def leaf(coords, x):  # the heap walk of tasks.sample_decision_tree
        node = 0
        for _ in range(depth):
            node = 2 * node + 1 + int(x[coords[node]] > 0)
        return node - inner
    preds = torch.zeros(B, N, dtype=torch.float64)
    trees = list(itertools.product(range(d), repeat=inner))
    for b, i in itertools.product(range(B), range(1, N)):
        log_w, f = [], []
        for coords in trees:
            A = torch.zeros(i, 2 ** depth, dtype=torch.float64)
            A[torch.arange(i), [leaf(coords, X[b, j]) for j in range(i)]] = 1
            C = A @ A.T + s2 * torch.eye(i, dtype=torch.float64)
            log_w.append(gaussian_log_density(Y[b, :i], C).item())
            f.append((A[:, leaf(coords, Q[b, i])] @ torch.linalg.solve(C, Y[b, :i])).item())
        preds[b, i] = mixture(log_w, f)
    return preds


@pytest.mark.parametrize("d,depth", [(2, 1), (3, 1), (2, 2), (3, 2), (2, 3)])
def test_tree_bayes_is_the_brute_force_posterior_mean(d, depth):
    xs, ys = prompts("decision_tree", 4, 9, d, seed=d * depth, tree_depth=depth)
    xq = torch.randn(xs.shape, generator=torch.Generator().manual_seed(3))
    for q in (xs, xq):
        fast = baselines.tree_bayes(xs, ys, q, depth=depth).double()[..., 0]
        brute = tree_brute(xs, ys, q, depth)
        assert torch.allclose(fast, brute, atol=1e-4), (fast - brute).abs().max()
        assert (fast[:, 1:] != 0).any()  # (not a vacuous check)


def test_tree_bayes_without_an_explaining_tree_predicts_zero():
    # all y's distinct: 2^depth + 1 of them cannot sit in 2^depth leaves; nor can two points of one sign
    # pattern hold two y's
    xs, ys = prompts("sparse_linear_regression", 16, 10, 3, sparsity=3)
    p = baselines.tree_bayes(xs, ys, depth=2)
    assert not p[:, 5:].any() and p[:, 1:5].any()
    same = torch.ones(1, 4, 3)  # one sign pattern, two y's
    assert not baselines.tree_bayes(same, torch.tensor([[[1.], [2.], [1.], [2.]]]), depth=2)[0, 2:].any()
    assert torch.equal(baselines.tree_bayes(same, torch.full((1, 4, 1), 0.7), depth=2)[0, 1:, 0],
                       torch.full((3,), 0.7))  # one group, pinned


@pytest.mark.parametrize("name,task,d,params", [("tree_bayes", "decision_tree", 5, {}),
                                                ("sparse_linear_bayes_k2", "sparse_linear_regression", 6,
                                                 dict(sparsity=2)),
                                                ("lasso_tuned_k2", "sparse_linear_regression", 6,
                                                 dict(sparsity=2))])
def test_the_contract(name, task, d, params):
    fn = baselines.BASELINES[name]
    xs, ys = prompts(task, 5, 12, d, **params)
    xq = torch.randn(xs.shape, generator=torch.Generator().manual_seed(4))
    p, pq = fn(xs, ys), fn(xs, ys, xq)
    assert p.shape == pq.shape == ys.shape and p.dtype == ys.dtype
    assert not p[:, 0].any() and not pq[:, 0].any()
    xq2 = xq.clone()
    xq2[:, 6] = -xq2[:, 6]
    pq2 = fn(xs, ys, xq2)
    assert torch.equal(pq2[:, :6], pq[:, :6]) and torch.equal(pq2[:, 7:], pq[:, 7:])
    xs2, ys2 = xs.clone(), ys.clone()
    xs2[:, 8:], ys2[:, 8:] = -xs2[:, 8:], ys2[:, 8:] + 3  # the future plays no part
    assert torch.allclose(fn(xs2, ys2)[:, :8], p[:, :8], atol=1e-6)
    assert torch.allclose(torch.cat([fn(xs[:2], ys[:2]), fn(xs[2:], ys[2:])]), p, atol=1e-6)  # per prompt

# -----------------------------------------------------------------------------
# the floor: on prompts of the prior, no baseline's mean squared error is below the Bayes one's at any length

def assert_floor(bayes, others, ys, se_tol=3.0):
    """every other curve >= the Bayes curve up to se_tol standard errors of the paired difference (the
    tolerance: Bayes is optimal in expectation, these are 512 samples) plus 1e-9 (float32 at error 0)"""
    err_b = (bayes - ys).double().pow(2).mean(-1)                          # (B, N)
    for name, p in others.items():
        diff = (p - ys).double().pow(2).mean(-1) - err_b                   # (B, N)
        low = diff.mean(0) + se_tol * diff.std(0) / math.sqrt(len(diff)) + 1e-9
        assert (low >= 0).all(), (name, diff.mean(0))


def test_sparse_linear_bayes_is_the_floor():
    xs, ys = prompts("sparse_linear_regression", 512, 17, 8, seed=5, sparsity=2)  # the study's setting
    names = ["zero", "least_squares", "averaging", "knn", "lasso",
             *(f"lasso_{a:g}" for a in baselines.LASSO_ALPHAS), "lasso_tuned_k2",
             "sparse_linear_bayes"]  # (the last assumes k = 3: misspecified, so no better)
    others = {n: baselines.BASELINES[n](xs, ys) for n in names}
    bayes = baselines.BASELINES["sparse_linear_bayes_k2"](xs, ys)
    assert_floor(bayes, others, ys)
    assert (bayes[:, 4:] - ys[:, 4:]).abs().max() < 1e-4  # exact from k + 1 = 3 points on (4: margin)
    # the tuned lasso is (within noise) at least as good as the best fixed alpha at every length
    fixed = [(others[f"lasso_{a:g}"] - ys).double().pow(2).mean((0, 2)) for a in baselines.LASSO_ALPHAS]
    best = torch.stack(fixed).amin(0)
    tuned = (others["lasso_tuned_k2"] - ys).double().pow(2)[..., 0]
    assert (tuned.mean(0) <= best + 3 * tuned.std(0) / math.sqrt(512) + 1e-9).all()


def test_sparse_linear_bayes_is_the_floor_at_the_default_k():
    xs, ys = prompts("sparse_linear_regression", 512, 11, 6, seed=6)  # sparsity 3, the task's default
    names = ("zero", "least_squares", "averaging", "knn", "lasso")
    others = {n: baselines.BASELINES[n](xs, ys) for n in names}
    assert_floor(baselines.BASELINES["sparse_linear_bayes"](xs, ys), others, ys)


def test_tree_bayes_is_the_floor():
    xs, ys = prompts("decision_tree", 512, 16, 5, seed=7)  # the study's setting: d = 5, depth 4
    others = {n: baselines.BASELINES[n](xs, ys) for n in ("zero", "least_squares", "averaging", "knn")}
    bayes = baselines.BASELINES["tree_bayes"](xs, ys)
    assert_floor(bayes, others, ys)
    try:  # sklearn's greedy tree, where installed (on 256 prompts: one fit per prompt and prefix)
        greedy = baselines.BASELINES["decision_tree"](xs[:256], ys[:256])
    except ImportError:
        greedy = None
    if greedy is not None:
        assert_floor(bayes[:256], dict(decision_tree=greedy), ys[:256])
    err = (bayes - ys).pow(2).mean((0, 2))
    assert err[-1] < 0.5 * err[1]  # it learns in context (not a floor by being level with the rest)


def test_for_task_passes_the_task_parameters_a_baseline_takes():
    xs, ys = prompts("sparse_linear_regression", 4, 8, 5, sparsity=2)
    run = tasks.TASK_DEFAULTS | dict(sparsity=2)  # a run's task parameters, as evaluate.py's plan['tkw']
    fn = baselines.for_task(baselines.BASELINES["sparse_linear_bayes"], run)
    assert torch.equal(fn(xs, ys), baselines.sparse_linear_bayes(xs, ys, k=2))
    fixed = baselines.for_task(baselines.BASELINES["sparse_linear_bayes_k2"], dict(sparsity=4))
    assert torch.equal(fixed(xs, ys), baselines.sparse_linear_bayes(xs, ys, k=2))  # its entry fixes k
    tree = baselines.for_task(baselines.BASELINES["tree_bayes"], dict(tree_depth=2, sparsity=4))
    assert tree.keywords == dict(depth=2)
    assert baselines.for_task(baselines.BASELINES["knn"], tasks.TASK_DEFAULTS).keywords == {}
