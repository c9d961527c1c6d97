"""
Baselines for in-context regression (docs/paper.md §5), batched over prompts AND context prefixes in torch:
the reference refits sklearn once per prompt per prefix, here one tensor program does all B * N fits.

The contract, shared with trained models (model_predict below):
    preds = fn(xs, ys, xq=None, **kw)      xs (B, N, d), ys (B, N, y_dim) -> preds (B, N, y_dim)
preds[:, i] is fitted on the pairs 0..i-1 only and evaluated at the query of position i, which is x_i itself
when xq is None (the ICL prompt) and xq[:, i] otherwise (Garg's out-of-distribution queries). preds[:, 0] = 0:
no context yet (parity_prior, which ignores the context, excepted).
"""
import importlib
import itertools
import math
import warnings
from functools import lru_cache, partial

import torch

import tasks


def queries(xs, xq):
    """the query of every position: x_i itself (xq None), or xq[:, i]"""
    return xs if xq is None else xq

# -----------------------------------------------------------------------------
# closed-form and neighbour baselines

def zero(xs, ys, xq=None):
    return torch.zeros_like(ys)  # defines xi_0 in the ICL score


def least_squares(xs, ys, xq=None, tol=1e-10):
    """min-norm least squares on every prefix (torch.linalg.lstsq's answer) in one pass over the prompt, by
    Greville's recursive pseudo-inverse: while a new x has a component c outside the span of the previous
    ones the min-norm solution moves along c, after that it is recursive least squares. float64: the
    square systems at i = d are ill-conditioned."""
    B, N, d = xs.shape
    X = xs.double()
    Y = ys.double()
    Q = queries(xs, xq).double()
    w = X.new_zeros(B, d, Y.shape[-1])  # the current solution
    preds = Y.new_zeros(Y.shape)
    # Pi: the projector onto the complement of span(x_<i); P: (X^T X)^+ on that span
    Pi = torch.eye(d, dtype=X.dtype, device=X.device).repeat(B, 1, 1)
    P = X.new_zeros(B, d, d)
    for i in range(N - 1):
        a = X[:, i, :, None]                                  # (B, d, 1) the new point
        r = Y[:, i, None, :] - (a * w).sum(1, keepdim=True)   # (B, 1, Y) its residual
        c = Pi @ a                                            # (B, d, 1) its part outside the span
        b = P @ a
        cc = (c * c).sum(1, keepdim=True)                     # (B, 1, 1)
        ab = 1 + (a * b).sum(1, keepdim=True)
        new = cc > tol * (a * a).sum(1, keepdim=True)         # does a bring a new direction?
        cc = torch.where(new, cc, 1.)
        w += torch.where(new, c / cc, b / ab) * r
        if new.any():  # greville's update of (X^T X)^+, and c leaves the complement
            nc = c * new
            e = b / cc
            P.addcmul_(nc, (ab / cc ** 2 * c - e).mT).addcmul_(e * new, c.mT, value=-1)
            Pi.addcmul_(nc, (c / cc).mT, value=-1)
        if not new.all():  # recursive least squares: sherman-morrison
            P.addcmul_(b / ab * ~new, b.mT, value=-1)
        preds[:, i + 1] = (Q[:, i + 1, :, None] * w).sum(1)
    return preds.to(ys.dtype)


def averaging(xs, ys, xq=None):
    # w_i = mean_{j<i} x_j y_j, the one-step gradient estimator of Garg et al.
    s = torch.cumsum(xs.unsqueeze(-1) * ys.unsqueeze(-2), dim=1)            # (B, N, d, Y) inclusive sums
    s = torch.cat([torch.zeros_like(s[:, :1]), s[:, :-1]], dim=1)            # exclusive: pairs < i
    counts = torch.arange(xs.shape[1], device=xs.device).clamp(min=1).view(1, -1, 1)
    return torch.einsum('bnd,bndy->bny', queries(xs, xq), s) / counts


def _earlier(N, device):  # (N, N) True where point j is not before position i: what prediction i must not see
    return torch.ones(N, N, dtype=torch.bool, device=device).triu()


def knn(xs, ys, xq=None, k=3):
    # uniform average of the k nearest previous x's (fewer while i < k), Euclidean distance
    N = xs.shape[1]
    D = torch.cdist(queries(xs, xq).double(), xs.double())                  # (B, N, N) query i vs point j
    D = D.masked_fill(_earlier(N, xs.device), math.inf)
    dist, idx = D.topk(min(k, N), dim=-1, largest=False)                     # (B, N, k)
    valid = dist.isfinite().to(ys.dtype).unsqueeze(-1)                       # (B, N, k, 1)
    near = ys.gather(1, idx.flatten(1).unsqueeze(-1).expand(-1, -1, ys.shape[-1])).view(*idx.shape, -1)
    return (near * valid).sum(2) / valid.sum(2).clamp(min=1)


def retrieval_dict(xs, ys, xq=None):
    # MQAR's exact lookup: the value of the previous key with the largest inner product with the query
    N = xs.shape[1]
    S = (queries(xs, xq) @ xs.transpose(1, 2)).masked_fill(_earlier(N, xs.device), -math.inf)
    preds = ys.gather(1, S.argmax(-1, keepdim=True).expand(-1, -1, ys.shape[-1]))  # (B, N, Y)
    preds[:, 0] = 0
    return preds


def parity_bayes(xs, ys, xq=None, k=2, context=True):
    # sparse parity's Bayes-optimal predictor (not in the paper; our classical stand-in for its trained
    # Mamba): the mean parity at the query over the k-subsets that agree with every context pair (45 at
    # d=10, k=2).
    # context=False ('parity_prior') averages over all subsets: the best guess without ICL, MSE 1 - 1/C(d,k)
    subsets = torch.tensor(list(itertools.combinations(range(xs.shape[-1]), k)), device=xs.device)  # (H, k)
    hyp = xs[..., subsets].prod(-1)                                           # (B, N, H) each hypothesis' y
    # consistent with pairs <= j
    ok = (hyp == ys).to(xs.dtype).cumprod(1) if context else torch.ones_like(hyp)
    ok = torch.cat([torch.ones_like(ok[:, :1]), ok[:, :-1]], dim=1)           # ... with pairs < i
    votes = queries(xs, xq)[..., subsets].prod(-1) * ok
    preds = votes.sum(-1, keepdim=True) / ok.sum(-1, keepdim=True).clamp(min=1)
    if context:
        # the contract (no context, no guess), though the prior mean would be the Bayes answer
        preds[:, 0] = 0
    return preds

# -----------------------------------------------------------------------------
# lasso: an exact active-set solver, warm-started from one prefix to the next

def _lasso_step(H, G, w, c, s, lam, eye):
    """one active-set step of lasso's fits (rows of H, G, w, c, s), in place; the fits that are done"""
    inf = math.inf
    r = torch.arange(len(w), device=w.device)
    active = s != 0
    target = torch.bmm(H, (c - lam * s)[:, :, None])[:, :, 0]  # the optimum for the current signs
    flips = (target * s <= 0) & active
    flipping = flips.any(1)
    frac, j_drop = torch.where(flips, w / (w - target), inf).min(1)  # first sign change on the way
    grad = torch.bmm(G, target[:, :, None])[:, :, 0] - c               # of the smooth part, at target
    violation, j_add = torch.where(active, -inf, grad.abs() - lam * (1 + 1e-12)).max(1)
    done = ~flipping & (violation <= 0)
    add = ~flipping & (violation > 0)
    w.copy_(torch.where(flipping[:, None], w + frac.clamp(0, 1)[:, None] * (target - w), target))
    g_jj = G[r, j_add, j_add]
    sign_j = -torch.sign(grad[r, j_add])
    g_col = G[r, j_add] * active  # row j = column j: G and H are symmetric
    H_g = torch.zeros_like(w)
    H_g[add] = torch.bmm(H[add], g_col[add, :, None])[:, :, 0]  # only the rows that add need it
    in_span = add & (g_jj - (g_col * H_g).sum(1) <= 1e-9 * g_jj)
    if in_span.any():
        # column j is in the span of the active ones: slide along the null direction u, where the
        # fixed-sign objective falls linearly, until an active weight hits 0, and swap the two
        u = sign_j[:, None] * (eye[j_add] - H_g)
        slide, k_swap = torch.where(active & (w * u < 0), -w / u, inf).min(1)
        # always true in exact arithmetic (the objective is bounded below)
        in_span &= slide.isfinite()
        w.add_(torch.where(in_span, slide, 0.)[:, None] * u)
        j_drop = torch.where(in_span, k_swap, j_drop)
    drop = flipping | in_span
    if drop.any():  # H loses row/column j: H - H[:, j] H[j, :] / H[j, j]
        rd = r[drop]
        jd = j_drop[drop]
        w[rd, jd] = 0.
        s[rd, jd] = 0.
        H_r = H[rd]
        keep = 1. - eye[jd]
        v = H_r[torch.arange(len(rd), device=w.device), jd]  # (|rd|, d)
        H_r -= v[:, :, None] * (v / v.gather(1, jd[:, None]))[:, None, :]
        H[rd] = H_r * keep[:, :, None] * keep[:, None, :]
        g_col = G[r, j_add] * (s != 0)
        H_g[add] = torch.bmm(H[add], g_col[add, :, None])[:, :, 0]
    if add.any():  # bordered inverse: H + v v^T / t with v = e_j - H g_j, t = G_jj - g_j^T H g_j
        ra = r[add]
        ja = j_add[add]
        v = eye[ja] - H_g[ra]
        H[ra] += v[:, :, None] * (v / (g_jj[ra] - (g_col[ra] * H_g[ra]).sum(1))[:, None])[:, None, :]
        s[ra, ja] = sign_j[ra]
    return done


def lasso(xs, ys, xq=None, alpha=1e-3, max_iter=200):
    """sklearn's Lasso(alpha, fit_intercept=False) on every prefix of i pairs,
        min_w |y - X w|^2 / (2 i) + alpha |w|_1,
    solved exactly (sklearn's coordinate descent needs thousands of sweeps at small i and often stops short).
    With G = X^T X, c = X^T y and lam = alpha i, fix the active set A and the signs s of its weights: the
    optimum is then w_A = H (c_A - lam s) with H = inv(G_AA), kept up to date by rank-one updates. Each step
      - moves towards that optimum and, if an active weight changes sign on the way, stops there and drops it;
      - else adds the inactive coordinate that most violates optimality (|gradient_j| > lam), with its sign;
      - if that coordinate's column lies in the span of the active ones (common while i < d), slides along the
        null direction instead, where the objective falls linearly, until an active weight reaches 0, and
        swaps;
    until no sign changes and no coordinate violates optimality. Warm-started from the previous prefix, most
    fits take one or two steps. Every y dimension is its own fit. float64."""
    B, N, d = xs.shape
    y_dims = ys.shape[-1]
    M = B * y_dims  # fits
    X = xs.double().repeat_interleave(y_dims, 0)                    # (M, N, d)
    Q = queries(xs, xq).double().repeat_interleave(y_dims, 0)
    Y = ys.double().transpose(1, 2).reshape(M, N)
    gram = X.new_zeros(M, d, d)        # G = X^T X of the prefix
    inv_active = X.new_zeros(M, d, d)  # H = inv(G_AA) on the active set, 0 elsewhere
    xty = X.new_zeros(M, d)            # c = X^T y
    weights = X.new_zeros(M, d)
    signs = X.new_zeros(M, d)          # s: +-1 on the active set, 0 off it
    preds = X.new_zeros(M, N)
    eye = torch.eye(d, dtype=X.dtype, device=X.device)
    for n in range(1, N):
        x = X[:, n - 1]
        gram.addcmul_(x[:, :, None], x[:, None, :])
        xty.addcmul_(x, Y[:, n - 1, None])
        hx = torch.bmm(inv_active, x[:, :, None])  # sherman-morrison keeps H = inv(G_AA) after the new point
        inv_active.addcmul_(hx / (1 + (x[:, :, None] * hx).sum(1, keepdim=True)), hx.mT, value=-1)
        lam = alpha * n  # sklearn's 1/(2n) scaling moved onto the penalty
        # the working set: every fit at first, then only the unfinished ones (rows: their indices)
        H, G, w, c, s = inv_active, gram, weights, xty, signs
        rows = None
        for it in range(max_iter):
            done = _lasso_step(H, G, w, c, s, lam, eye)
            if done.all():
                break
            if it == max_iter - 1:
                warnings.warn(f"lasso: {int((~done).sum())} fits at prefix {n} did not settle in {max_iter} "
                              "active-set steps")
            if done.sum() > len(done) // 4:  # shrink the working set; finished fits go home
                if rows is not None:
                    inv_active[rows] = H
                    weights[rows] = w
                    signs[rows] = s
                rows = (~done).nonzero()[:, 0] if rows is None else rows[~done]
                H, G, w, c, s = inv_active[rows], gram[rows], weights[rows], xty[rows], signs[rows]
        if rows is not None:
            inv_active[rows] = H
            weights[rows] = w
            signs[rows] = s
        preds[:, n] = (Q[:, n] * weights).sum(1)
    return preds.view(B, y_dims, N).transpose(1, 2).to(ys.dtype)

# -----------------------------------------------------------------------------
# Bayes posterior means under the tasks' own priors (the error floors: no predictor does better on average),
# and the Lasso with alpha tuned on that prior

def sparse_linear_bayes(xs, ys, xq=None, k=3, noise=1e-10):
    """the posterior mean under sparse_linear_regression's prior: w ~ N(0, I) on a uniform k-subset S of the d
    coordinates, y = x . w + N(0, noise). Given S it is Bayesian linear regression on X_S, and with G = X^T X,
    c = X^T y of the prefix and M = G_SS + noise I (k x k) the determinant lemma and Woodbury turn the
    evidence N(y; 0, X_S X_S^T + noise I) into k x k algebra:
        m_S = M^-1 c_S                                                   the posterior mean of w_S
        log p(y | S) = -log det(M) / 2 - (|y - X_S m_S|^2 + noise |m_S|^2) / (2 noise) + (same for all S)
    where |y - X_S m_S|^2 + noise |m_S|^2 = y.y - 2 m_S.c_S + m_S^T M m_S (second order in m_S's rounding).
    The prediction is sum_S p(S | y) x_S . m_S, p(S | y) the softmax of log p(y | S) over the C(d, k)
    supports. The task has no noise; the default 1e-10 (sd 1e-5, ~100 float32 roundings of y) is its limit to
    within float32: from i = k + 1 points on only the true support fits, at i <= k every support fits and the
    weights tend to N(y; 0, X_S X_S^T). noise > 0. All d coordinates are taken as active; every y dimension is
    its own fit. float64."""
    B, N, d = xs.shape
    k = min(k, d)  # as the sampler: every coordinate when there are fewer than k
    X = xs.double()
    Y = ys.double()
    Q = queries(xs, xq).double()
    S = torch.tensor(list(itertools.combinations(range(d), k)), device=xs.device)  # (H, k) the supports
    jitter = noise * torch.eye(k, dtype=X.dtype, device=X.device)
    G = X.new_zeros(B, d, d)
    c = X.new_zeros(B, d, Y.shape[-1])
    yy = X.new_zeros(B, 1, Y.shape[-1])
    preds = Y.new_zeros(Y.shape)
    for i in range(1, N):
        x = X[:, i - 1]
        G.addcmul_(x[:, :, None], x[:, None, :])
        c.addcmul_(x[:, :, None], Y[:, i - 1, None, :])
        yy.addcmul_(Y[:, i - 1, None], Y[:, i - 1, None])
        M = G[:, S[:, :, None], S[:, None, :]] + jitter                     # (B, H, k, k)
        c_S = c[:, S]                                                        # (B, H, k, Y)
        L = torch.linalg.cholesky(M)
        m = torch.cholesky_solve(c_S, L)                                     # (B, H, k, Y)
        misfit = yy - 2 * (m * c_S).sum(2) + (m * (M @ m)).sum(2)            # (B, H, Y)
        half_logdet = L.diagonal(dim1=-2, dim2=-1).log().sum(-1, keepdim=True)  # (B, H, 1)
        weight = (-half_logdet - misfit / (2 * noise)).softmax(1)           # (B, H, Y) p(S | y)
        f = (Q[:, i][:, S, None] * m).sum(2)                                 # (B, H, Y) each support's guess
        preds[:, i] = (weight * f).sum(1)
    return preds.to(ys.dtype)


# 1e-6 .. 3.2 by quarter decades, LASSO_ALPHAS among them
LASSO_TUNE_ALPHAS = tuple(10 ** (e / 4) for e in range(-24, 3))


@lru_cache(maxsize=None)
def lasso_alphas(n_points, n_dims, k, n_prompts=1024, seed=1_000_003, alphas=LASSO_TUNE_ALPHAS):
    """per context length, the alpha with the least mean squared error on n_prompts held-out prompts of
    sparse_linear_regression (sparsity k), drawn from a generator of their own (seed: not an evaluation's)"""
    g = torch.Generator().manual_seed(seed)
    xs, ys = tasks.sample('sparse_linear_regression', n_prompts, n_points, n_dims, g, sparsity=k)
    err = torch.stack([(lasso(xs, ys, alpha=a) - ys).double().pow(2).mean((0, 2)) for a in alphas])  # (A, N)
    return tuple(alphas[j] for j in err.argmin(0).tolist())


def lasso_tuned(xs, ys, xq=None, k=3, **tune):
    """lasso with alpha tuned per context length on held-out prompts of the task's prior: at each length i the
    alpha of LASSO_TUNE_ALPHAS with the least mean squared error at i on 1,024 prompts of
    sparse_linear_regression (sparsity k, the evaluated prompts' n_dims and n_points, a seed of their own;
    lasso_alphas, cached). One lasso pass per distinct alpha chosen."""
    chosen = lasso_alphas(xs.shape[1], xs.shape[2], k, **tune)
    preds = torch.zeros_like(ys)
    for a in sorted(set(chosen[1:])):
        at = torch.tensor([i > 0 and c == a for i, c in enumerate(chosen)], device=xs.device)  # (N,)
        preds[:, at] = lasso(xs, ys, xq, alpha=a)[:, at]
    return preds


@lru_cache(maxsize=None)
def _cubes(d, depth):
    """the sets of points a tree node can receive: sign cubes, the signs (-1: x_c <= 0, +1: x_c > 0) fixed on
    the coordinates split on above it, free (0) elsewhere. -> signs (K, d), ordered by how many are fixed;
    sizes[t] = how many cubes have <= t fixed; children[t] = (lo, hi) (sizes[t], d): the cubes a split on c
    sends to either side, sizes[t + 1] standing for no point (c already fixed: all go one way)"""
    cubes = [tuple(dict(zip(cs, ss)).get(c, 0) for c in range(d)) for j in range(depth + 1)
             for cs in itertools.combinations(range(d), j) for ss in itertools.product((-1, 1), repeat=j)]
    index = {cube: n for n, cube in enumerate(cubes)}
    sizes = [sum(math.comb(d, j) * 2 ** j for j in range(t + 1)) for t in range(depth + 1)]
    children = []
    for t in range(depth):
        side = {}
        for s in (-1, 1):
            side[s] = [[index[cube[:c] + (s,) + cube[c + 1:]] if cube[c] in (0, s) else sizes[t + 1]
                        for c in range(d)] for cube in cubes[:sizes[t]]]
        children.append((torch.tensor(side[-1]), torch.tensor(side[1])))
    return torch.tensor(cubes, dtype=torch.float64), sizes, children


def tree_bayes(xs, ys, xq=None, depth=4, tol=1e-6, chunk=256):
    """the posterior mean under decision_tree's prior: a full binary tree of `depth` whose 2^depth - 1 split
    coordinates are iid uniform (left if x_c <= 0), N(0, 1) leaf values, y = the leaf's value. Without noise
    the context's equal y's form groups, and a tree explains the data iff two points share a leaf exactly when
    they share a y (a group over two leaves needs two continuous values to coincide: with noise s -> 0 it
    loses a factor ~s). Trees that explain it have equal likelihood, so p(T | data) = prior(T) [T explains],
    and given T the answer is the y of the query's leaf's group, 0 if empty. A node at depth t receives the
    points of a sign cube K (the signs on the coordinates split on above), so with Z(t, K) the prior
    probability that a subtree of depth - t explains K's points and A(t, K) the same weighted by its answer
    at the query (0 unless the query is in K):
        Z(t, K) = mean_c ok(K, c) Z(t+1, K_c-) Z(t+1, K_c+)
        A(t, K) = mean_c ok(K, c) (A(t+1, K_c-) Z(t+1, K_c+) + A(t+1, K_c+) Z(t+1, K_c-))
    ok = no group on both sides; at the leaves Z = [at most one group] and A = Z [query in K] y_group. The
    prediction is A(0, R^d) / Z(0, R^d), 0 where no tree explains the context (more groups than leaves, noisy
    y's). The states are the cubes with <= depth coordinates fixed (211 at d = 5, depth 4) for all prompts and
    prefixes at once, the groups the bits of an int64 (depth <= 6); y's within tol (relative) are equal.
    float64, `chunk` prompts at a time."""
    B, N, d = xs.shape
    if B > chunk:  # bounded memory: ~ chunk * N * K * d * 40 bytes
        parts = [tree_bayes(xs[s:s + chunk], ys[s:s + chunk], None if xq is None else xq[s:s + chunk],
                            depth, tol, chunk) for s in range(0, B, chunk)]
        return torch.cat(parts)
    if depth > 6:
        raise ValueError(f"tree_bayes: depth <= 6 (2^depth groups as the bits of an int64), got {depth}")
    signs, sizes, children = _cubes(d, depth)
    signs = signs.to(xs.device)
    Y = ys.double()
    n_fixed = signs.abs().sum(1)                                                    # (K,)
    # a point (a query) is in a cube if it has the cube's sign on every fixed coordinate
    in_cube = (torch.where(xs > 0, 1., -1.).double() @ signs.T) == n_fixed          # (B, N, K)
    q_in = (torch.where(queries(xs, xq) > 0, 1., -1.).double() @ signs.T) == n_fixed
    # groups: a point's group is its first equal y, its bit the rank of that group in the prompt
    close = (Y[:, :, None] - Y[:, None]).abs() <= tol * torch.maximum(Y[:, :, None].abs(), Y[:, None].abs())
    earlier = torch.ones(N, N, dtype=torch.bool, device=xs.device).tril()
    first = (close.all(-1) & earlier).int().argmax(-1)                              # (B, N) first equal y
    new = first == torch.arange(N, device=xs.device)                                # (B, N) opens a group
    rank = new.cumsum(1) - 1
    bit = torch.ones_like(rank) << rank.gather(1, first).clamp(max=63)              # (B, N)
    n_groups = new.cumsum(1) - new.long()                                           # (B, N) in pairs < i
    # per prefix (pairs < i): the groups in each cube (bits), the count and the sum of their y's
    mask = torch.zeros(B, N, len(signs), dtype=torch.long, device=xs.device)        # (B, N, K)
    for i in range(1, N):
        mask[:, i] = mask[:, i - 1] | in_cube[:, i - 1] * bit[:, i - 1, None]
    count = in_cube.double().cumsum(1) - in_cube.double()                           # (B, N, K)
    y_in = in_cube[..., None] * Y[:, :, None]                                       # (B, N, K, Y)
    y_sum = y_in.cumsum(1) - y_in
    # the leaves, then up the tree: one level per depth, the cubes with <= t fixed coordinates at level t
    Z = ((mask & (mask - 1)) == 0).double()                                         # (B, N, K) <= one group
    A = (Z * q_in)[..., None] * y_sum / count.clamp(min=1)[..., None]               # (B, N, K, Y)
    for t in reversed(range(depth)):
        lo, hi = (idx.to(xs.device) for idx in children[t])                         # (K_t, d)
        n = sizes[t + 1]  # also the index of "no point"
        m = torch.cat([mask[..., :n], mask.new_zeros(B, N, 1)], -1)
        Zc = torch.cat([Z[..., :n], Z.new_ones(B, N, 1)], -1)                       # no point: any fits
        Ac = torch.cat([A[..., :n, :], A.new_zeros(B, N, 1, A.shape[-1])], -2)
        ok = (m[..., lo] & m[..., hi]) == 0                                         # (B, N, K_t, d)
        Z_lo = Zc[..., lo]
        Z_hi = Zc[..., hi]
        A = (ok[..., None] * (Ac[..., lo, :] * Z_hi[..., None] + Ac[..., hi, :] * Z_lo[..., None])).mean(-2)
        Z = (ok * Z_lo * Z_hi).mean(-1)                                             # (B, N, K_t)
    explained = (Z[..., 0] > 0) & (n_groups <= 2 ** depth)                          # (B, N)
    preds = torch.where(explained[..., None], A[..., 0, :] / Z[..., 0, None].clamp(min=1e-300), 0.)
    return preds.to(ys.dtype)

# -----------------------------------------------------------------------------
# a 2-layer ReLU MLP trained by gradient descent, one fresh net per prompt and prefix, all at once

def gd_mlp(xs, ys, xq=None, steps=1000, lr=5e-3, batch_size=1, hidden=100, chunk=2048, seed=0):
    """paper: 1000 Adam steps (lr 5e-3) on one random context point each; reference code: 100 steps on up to
    100 points (gd_mlp_ref). Every fit is a slice of one (fits, ...) tensor and Adam is elementwise, so one
    fused Adam on the stack is exactly independent Adams. Hand-written gradients; `chunk` fits at a time
    bound memory."""
    Q = queries(xs, xq)
    B, N, d = xs.shape
    y_dims = ys.shape[-1]
    g = torch.Generator(device=xs.device).manual_seed(seed)
    rand = partial(torch.rand, generator=g, device=xs.device)
    grid = torch.meshgrid(torch.arange(B), torch.arange(1, N), indexing='ij')
    b_all, n_all = (t.flatten() for t in grid)
    preds = ys.new_zeros(ys.shape)
    for s in range(0, len(b_all), chunk):
        b = b_all[s:s + chunk].to(xs.device)  # fit f uses the pairs < n[f] of prompt b[f]
        n = n_all[s:s + chunk].to(xs.device)
        m = len(b)
        X = xs[b]
        T = ys[b]
        k1 = 1 / math.sqrt(d)  # nn.Linear's default init, as the reference
        k2 = 1 / math.sqrt(hidden)
        W1 = (rand(m, d, hidden) * 2 - 1) * k1
        b1 = (rand(m, 1, hidden) * 2 - 1) * k1
        W2 = (rand(m, hidden, y_dims) * 2 - 1) * k2
        b2 = (rand(m, 1, y_dims) * 2 - 1) * k2
        params = [W1, b1, W2, b2]
        for p in params:
            p.grad = torch.zeros_like(p)  # filled by hand below
        opt = torch.optim.Adam(params, lr=lr, fused=True)
        k = min(batch_size, N - 1)
        for _ in range(steps):  # each fit's batch: min(n, k) of its context points, without replacement
            keys = rand(m, N).masked_fill(torch.arange(N, device=xs.device) >= n[:, None], 2.)
            j = keys.topk(k, dim=1, largest=False).indices                             # (m, k)
            in_batch = torch.arange(k, device=xs.device) < n[:, None]
            wt = (in_batch / n.clamp(max=k)[:, None]).unsqueeze(-1)                    # MSE weights
            xb = X.gather(1, j[..., None].expand(-1, -1, d))
            yb = T.gather(1, j[..., None].expand(-1, -1, y_dims))
            a = torch.baddbmm(b1, xb, W1)                                              # (m, k, hidden)
            h = a.clamp(min=0)
            e = 2 * (torch.baddbmm(b2, h, W2) - yb) * wt / y_dims                      # dloss/dout, (m, k, Y)
            torch.bmm(h.mT, e, out=W2.grad)
            b2.grad.copy_(e.sum(1, keepdim=True))
            dh = torch.bmm(e, W2.mT) * (a > 0)                                         # (m, k, hidden)
            torch.bmm(xb.mT, dh, out=W1.grad)
            b1.grad.copy_(dh.sum(1, keepdim=True))
            opt.step()
        hidden_q = torch.baddbmm(b1, Q[b, n][:, None], W1).clamp(min=0)
        preds[b, n] = torch.baddbmm(b2, hidden_q, W2)[:, 0]
    return preds

# -----------------------------------------------------------------------------
# the reference approach: one sklearn/xgboost fit per prompt per prefix (optional packages, slow); trained
# models

def per_fit(make, xs, ys, xq=None):
    X, Y, Q = (t.detach().double().cpu().numpy() for t in (xs, ys, queries(xs, xq)))
    preds = torch.zeros(ys.shape, dtype=torch.float64)
    for b, i in itertools.product(range(X.shape[0]), range(1, X.shape[1])):
        fit = make().fit(X[b, :i], Y[b, :i, 0] if Y.shape[-1] == 1 else Y[b, :i])
        preds[b, i] = torch.from_numpy(fit.predict(Q[b, i:i + 1]).reshape(-1))
    return preds.to(ys.dtype)


_OPTIONAL = dict(lasso=('sklearn.linear_model', 'Lasso'), tree=('sklearn.tree', 'DecisionTreeRegressor'),
                 xgboost=('xgboost', 'XGBRegressor'))
PIP_NAMES = dict(sklearn='scikit-learn')  # import name -> the package to pip install, where they differ


def _make(kind, **kw):  # optional packages, imported only when such a baseline is asked for
    module, name = _OPTIONAL[kind]
    return getattr(importlib.import_module(module), name)(**kw)


@torch.no_grad()
def model_predict(model, xs, ys, xq=None):
    """a trained model under the baselines' contract: prediction i at x token i. A query other than x_i
    (Garg's OOD queries) costs one forward per position, on the prompt cut after point i with x_i replaced:
    causality makes the later points irrelevant."""
    dev = next(model.parameters()).device
    xs = xs.to(dev)
    ys = ys.to(dev)
    if xq is None:
        return model(xs, ys).float()
    xq = xq.to(dev)
    per_position = [model(torch.cat([xs[:, :i], xq[:, i:i + 1]], 1), ys[:, :i + 1])[:, i]
                    for i in range(xs.shape[1])]
    return torch.stack(per_position, 1).float()

# -----------------------------------------------------------------------------
# registry (each task's score baseline and plotted curves are in its tasks.TASKS record)

LASSO_ALPHAS = (1e-4, 1e-3, 1e-2, 0.1, 1.0)  # the reference configs' "lasso_set" (Garg's sweep)
BASELINES = dict(
    zero=zero,
    least_squares=least_squares,
    averaging=averaging,
    knn=knn,
    retrieval_dict=retrieval_dict,
    parity_bayes=parity_bayes,
    parity_prior=partial(parity_bayes, context=False),
    lasso=lasso,
    **{f'lasso_{a:g}': partial(lasso, alpha=a) for a in LASSO_ALPHAS},
    lasso_tuned=lasso_tuned,
    lasso_tuned_k2=partial(lasso_tuned, k=2),  # the study's sparse linear (d = 8, k = 2)
    sparse_linear_bayes=sparse_linear_bayes,
    sparse_linear_bayes_k2=partial(sparse_linear_bayes, k=2),
    tree_bayes=tree_bayes,
    gd_mlp=gd_mlp,
    gd_mlp_ref=partial(gd_mlp, steps=100, batch_size=100),
    lasso_sklearn=partial(per_fit, partial(_make, 'lasso', alpha=1e-3, fit_intercept=False, max_iter=100000)),
    decision_tree=partial(per_fit, partial(_make, 'tree', max_depth=4, random_state=0)),  # Garg's greedy tree
    xgboost=partial(per_fit, partial(_make, 'xgboost')),
)


# the task parameters (tasks.TASK_DEFAULTS keys) that a baseline function takes, and as which keyword
TASK_PARAMS = {sparse_linear_bayes: dict(sparsity='k'), lasso_tuned: dict(sparsity='k'),
               tree_bayes: dict(tree_depth='depth')}


def for_task(fn, params):
    """a BASELINES entry given the run's task parameters (TASK_DEFAULTS keys) that it takes and its entry
    leaves open: sparse_linear_bayes gets the run's sparsity, sparse_linear_bayes_k2 keeps k = 2"""
    bound = getattr(fn, 'keywords', {})
    kw = {key: params[p] for p, key in TASK_PARAMS.get(getattr(fn, 'func', fn), {}).items()
          if p in params and key not in bound}
    return partial(fn, **kw)
