"""
Baselines for in-context regression (docs/paper.md §5, docs/predecessors.md §1.5), batched over prompts AND
context prefixes in torch: the reference refits sklearn once per prompt per prefix, here one tensor program
does all B * N fits. Same contract as a model: preds = fn(xs, ys, xq=None, **kw), (B, N, d) x (B, N, y_dim)
-> (B, N, y_dim), where preds[:, i] is fitted on the pairs 0..i-1 only and evaluated at the query xq[:, i]
(default: x_i itself), and preds[:, 0] = 0 (no context yet; parity_prior, which ignores the context, excepted).
"""
import importlib, itertools, math, warnings
from functools import partial

import torch

# -----------------------------------------------------------------------------
# closed-form and neighbour baselines

def zero(xs, ys, xq=None):
    return torch.zeros_like(ys)  # defines xi_0 in the ICL score

def least_squares(xs, ys, xq=None, tol=1e-10):
    """min-norm least squares on every prefix (torch.linalg.lstsq's answer) in one pass over the prompt, by
    Greville's recursive pseudo-inverse: while a new x has a component c outside the span of the previous
    ones the min-norm solution moves along c, after that it is recursive least squares. float64: the
    square systems at i = d are ill-conditioned."""
    xq = xs if xq is None else xq
    B, N, d = xs.shape
    X, Y, Q = xs.double(), ys.double(), xq.double()
    w, preds = X.new_zeros(B, d, Y.shape[-1]), Y.new_zeros(Y.shape)  # current solution; outputs
    Pi = torch.eye(d, dtype=X.dtype, device=X.device).repeat(B, 1, 1)  # projector onto the complement of span(x_<i)
    P = X.new_zeros(B, d, d)                           # (X^T X)^+ on that span
    for i in range(N - 1):
        a = X[:, i, :, None]                                  # (B, d, 1) the new point
        r = Y[:, i, None, :] - (a * w).sum(1, keepdim=True)   # (B, 1, Y) its residual
        c, b = Pi @ a, P @ a                                  # (B, d, 1) each
        cc, ab = (c * c).sum(1, keepdim=True), 1 + (a * b).sum(1, keepdim=True)  # (B, 1, 1)
        new = cc > tol * (a * a).sum(1, keepdim=True)         # does a bring a new direction?
        cc = torch.where(new, cc, 1.)
        w += torch.where(new, c / cc, b / ab) * r
        if new.any():  # greville's update of (X^T X)^+, and c leaves the complement
            nc, e = c * new, b / cc
            P.addcmul_(nc, (ab / cc ** 2 * c - e).mT).addcmul_(e * new, c.mT, value=-1)
            Pi.addcmul_(nc, (c / cc).mT, value=-1)
        if not new.all():  # recursive least squares: sherman-morrison
            P.addcmul_(b / ab * ~new, b.mT, value=-1)
        preds[:, i + 1] = (Q[:, i + 1, :, None] * w).sum(1)
    return preds.to(ys.dtype)

def averaging(xs, ys, xq=None):
    # w_i = mean_{j<i} x_j y_j, the one-step gradient estimator of Garg et al.
    xq = xs if xq is None else xq
    s = torch.cumsum(xs.unsqueeze(-1) * ys.unsqueeze(-2), dim=1)            # (B, N, d, Y) inclusive sums
    s = torch.cat([torch.zeros_like(s[:, :1]), s[:, :-1]], dim=1)            # exclusive: pairs < i
    return torch.einsum('bnd,bndy->bny', xq, s) / torch.arange(xs.shape[1], device=xs.device).clamp(min=1).view(1, -1, 1)

def knn(xs, ys, xq=None, k=3):
    # uniform average of the k nearest previous x's (fewer while i < k), Euclidean distance
    xq = xs if xq is None else xq
    N = xs.shape[1]
    D = torch.cdist(xq.double(), xs.double())                                # (B, N, N) query i vs point j
    D = D.masked_fill(torch.ones(N, N, dtype=torch.bool, device=xs.device).triu(), math.inf)
    dist, idx = D.topk(min(k, N), dim=-1, largest=False)                     # (B, N, k)
    valid = dist.isfinite().to(ys.dtype).unsqueeze(-1)                       # (B, N, k, 1)
    near = ys.gather(1, idx.flatten(1).unsqueeze(-1).expand(-1, -1, ys.shape[-1])).view(*idx.shape, -1)
    return (near * valid).sum(2) / valid.sum(2).clamp(min=1)

def retrieval_dict(xs, ys, xq=None):
    # MQAR's exact lookup: the value of the previous key with the largest inner product with the query
    xq = xs if xq is None else xq
    N = xs.shape[1]
    S = (xq @ xs.transpose(1, 2)).masked_fill(torch.ones(N, N, dtype=torch.bool, device=xs.device).triu(), -math.inf)
    preds = ys.gather(1, S.argmax(-1, keepdim=True).expand(-1, -1, ys.shape[-1]))  # (B, N, Y)
    preds[:, 0] = 0
    return preds

def parity_bayes(xs, ys, xq=None, k=2, context=True):
    # sparse parity's Bayes-optimal predictor (not in the paper; our classical stand-in for its trained Mamba): the mean
    # parity at the query over the k-subsets that agree with every context pair (45 at d=10, k=2). context=False
    # ('parity_prior') averages over all subsets: the best guess without ICL, MSE 1 - 1/C(d,k) at every position
    xq = xs if xq is None else xq
    subsets = torch.tensor(list(itertools.combinations(range(xs.shape[-1]), k)), device=xs.device)  # (H, k)
    hyp = xs[..., subsets].prod(-1)                                           # (B, N, H) each hypothesis' y
    ok = (hyp == ys).to(xs.dtype).cumprod(1) if context else torch.ones_like(hyp)  # consistent with pairs <= j
    ok = torch.cat([torch.ones_like(ok[:, :1]), ok[:, :-1]], dim=1)           # ... with pairs < i
    preds = (xq[..., subsets].prod(-1) * ok).sum(-1, keepdim=True) / ok.sum(-1, keepdim=True).clamp(min=1)
    if context:
        preds[:, 0] = 0  # the contract (no context, no guess), though the prior mean would be the Bayes answer
    return preds

# -----------------------------------------------------------------------------
# lasso: an exact active-set solver, warm-started from one prefix to the next

def lasso(xs, ys, xq=None, alpha=1e-3, max_iter=200):
    """sklearn's Lasso(alpha, fit_intercept=False) on every prefix, min_w |y - Xw|^2 / 2i + alpha |w|_1, solved exactly
    (sklearn's coordinate descent needs thousands of sweeps at small i and often stops short) by a Lawson-Hanson
    style active set on G = X^T X: for active set A with signs s the optimum is H (c_A - lam s), H = inv(G_AA)
    kept by rank-one updates. Each step goes to the first sign change and drops it, or adds the worst KKT
    violator. Warm-started from the previous prefix, most fits take one or two steps. float64."""
    xq, (B, N, d), Yd = xs if xq is None else xq, xs.shape, ys.shape[-1]
    M = B * Yd  # every y dim is its own fit
    X, Q = xs.double().repeat_interleave(Yd, 0), xq.double().repeat_interleave(Yd, 0)  # (M, N, d)
    Yv = ys.double().transpose(1, 2).reshape(M, N)
    G, H = X.new_zeros(M, d, d), X.new_zeros(M, d, d)  # Gram; inverse of G on the active set (0 elsewhere)
    c, w, th = X.new_zeros(M, d), X.new_zeros(M, d), X.new_zeros(M, d)  # X^T y; solution; signs (0: inactive)
    preds, eye, inf = X.new_zeros(M, N), torch.eye(d, dtype=X.dtype, device=X.device), math.inf
    for n in range(1, N):
        x = X[:, n - 1]
        G.addcmul_(x[:, :, None], x[:, None, :])
        c.addcmul_(x, Yv[:, n - 1, None])
        hx = torch.bmm(H, x[:, :, None])  # sherman-morrison keeps H = inv(G_AA) after the new point
        H.addcmul_(hx / (1 + (x[:, :, None] * hx).sum(1, keepdim=True)), hx.mT, value=-1)
        lam = alpha * n  # sklearn's 1/(2n) scaling moved onto the penalty
        Hs, Gs, ws, cs, ts, idx = H, G, w, c, th, None  # the working set: everyone, then the unfinished rows
        for it in range(max_iter):
            ar, act = torch.arange(len(ws), device=X.device), ts != 0
            z = torch.bmm(Hs, (cs - lam * ts)[:, :, None])[:, :, 0]  # optimum for the current signs
            bad = (z * ts <= 0) & act
            anybad = bad.any(1)
            t, jdrop = torch.where(bad, ws / (ws - z), inf).min(1)  # first sign change on the way to z
            g = torch.bmm(Gs, z[:, :, None])[:, :, 0] - cs            # gradient of the smooth part at z
            vmax, jadd = torch.where(act, -inf, g.abs() - lam * (1 + 1e-12)).max(1)
            done, add = ~anybad & (vmax <= 0), ~anybad & (vmax > 0)
            ws.copy_(torch.where(anybad[:, None], ws + t.clamp(0, 1)[:, None] * (z - ws), z))
            gjj, thj = Gs[ar, jadd, jadd], -torch.sign(g[ar, jadd])
            gcol, Hg = Gs[ar, jadd] * act, torch.zeros_like(ws)  # row j = column j: G and H are symmetric
            Hg[add] = torch.bmm(Hs[add], gcol[add, :, None])[:, :, 0]  # only the rows that add need it
            ray = add & (gjj - (gcol * Hg).sum(1) <= 1e-9 * gjj)
            if ray.any():
                # column j is in the span of the active ones (common at i < d): slide along the null direction u, where
                # the fixed-sign objective falls linearly, until an active weight hits 0, and swap the two
                u = thj[:, None] * (eye[jadd] - Hg)
                tau, kswap = torch.where(act & (ws * u < 0), -ws / u, inf).min(1)
                ray &= tau.isfinite()  # always true in exact arithmetic (the objective is bounded below)
                ws.add_(torch.where(ray, tau, 0.)[:, None] * u)
                jdrop = torch.where(ray, kswap, jdrop)
            drop = anybad | ray
            if drop.any():  # H loses row/column j: H - H[:, j] H[j, :] / H[j, j]
                r, j = ar[drop], jdrop[drop]
                ws[r, j], ts[r, j], Hr, keep = 0., 0., Hs[r], 1. - eye[j]
                v = Hr[torch.arange(len(r), device=X.device), j]  # (|r|, d)
                Hr -= v[:, :, None] * (v / v.gather(1, j[:, None]))[:, None, :]
                Hs[r] = Hr * keep[:, :, None] * keep[:, None, :]
                gcol = Gs[ar, jadd] * (ts != 0)
                Hg[add] = torch.bmm(Hs[add], gcol[add, :, None])[:, :, 0]
            if add.any():  # bordered inverse: H + v v^T / s with v = e_j - H g_j, s = G_jj - g_j^T H g_j
                r, j = ar[add], jadd[add]
                v = eye[j] - Hg[r]
                Hs[r] += v[:, :, None] * (v / (gjj[r] - (gcol[r] * Hg[r]).sum(1))[:, None])[:, None, :]
                ts[r, j] = thj[r]
            if done.all():
                break
            if it == max_iter - 1:
                warnings.warn(f"lasso: {int((~done).sum())} fits at prefix {n} did not settle in {max_iter} active-set steps")
            if done.sum() > len(done) // 4:  # shrink the working set; finished rows go home
                if idx is not None:
                    H[idx], w[idx], th[idx] = Hs, ws, ts
                idx = (~done).nonzero()[:, 0] if idx is None else idx[~done]
                Hs, Gs, ws, cs, ts = H[idx], G[idx], w[idx], c[idx], th[idx]
        if idx is not None:
            H[idx], w[idx], th[idx] = Hs, ws, ts
        preds[:, n] = (Q[:, n] * w).sum(1)
    return preds.view(B, Yd, N).transpose(1, 2).to(ys.dtype)

# -----------------------------------------------------------------------------
# a 2-layer ReLU MLP trained by gradient descent, one fresh net per prompt and prefix, all at once

def gd_mlp(xs, ys, xq=None, steps=1000, lr=5e-3, batch_size=1, hidden=100, chunk=2048, seed=0):
    """paper: 1000 Adam steps (lr 5e-3) on one random context point each; reference code: 100 steps on up to 100
    points (gd_mlp_ref). Every fit is a slice of one (fits, ...) tensor and Adam is elementwise, so one fused
    Adam on the stack is exactly independent Adams. Hand-written gradients; `chunk` fits at a time bound memory."""
    xq = xs if xq is None else xq
    (B, N, d), Yd = xs.shape, ys.shape[-1]
    g = torch.Generator(device=xs.device).manual_seed(seed)
    rand = partial(torch.rand, generator=g, device=xs.device)
    b_all, n_all = (t.flatten() for t in torch.meshgrid(torch.arange(B), torch.arange(1, N), indexing='ij'))
    preds = ys.new_zeros(ys.shape)
    for s in range(0, len(b_all), chunk):
        b, n = b_all[s:s + chunk].to(xs.device), n_all[s:s + chunk].to(xs.device)  # fit f uses pairs < n[f]
        m, X, T = len(b), xs[b], ys[b]
        k1, k2 = 1 / math.sqrt(d), 1 / math.sqrt(hidden)  # nn.Linear's default init, as the reference
        W1, b1 = (rand(m, d, hidden) * 2 - 1) * k1, (rand(m, 1, hidden) * 2 - 1) * k1
        W2, b2 = (rand(m, hidden, Yd) * 2 - 1) * k2, (rand(m, 1, Yd) * 2 - 1) * k2
        for p in (params := [W1, b1, W2, b2]):
            p.grad = torch.zeros_like(p)  # filled by hand below
        opt, k = torch.optim.Adam(params, lr=lr, fused=True), min(batch_size, N - 1)
        for _ in range(steps):  # each fit's batch: min(n, k) of its context points, without replacement
            keys = rand(m, N).masked_fill(torch.arange(N, device=xs.device) >= n[:, None], 2.)
            j = keys.topk(k, dim=1, largest=False).indices                             # (m, k)
            wt = ((torch.arange(k, device=xs.device) < n[:, None]) / n.clamp(max=k)[:, None]).unsqueeze(-1)  # MSE weights
            xb, yb = X.gather(1, j[..., None].expand(-1, -1, d)), T.gather(1, j[..., None].expand(-1, -1, Yd))
            a = torch.baddbmm(b1, xb, W1)                                              # (m, k, hidden)
            h = a.clamp(min=0)
            e = 2 * (torch.baddbmm(b2, h, W2) - yb) * wt / Yd                          # dloss/dout, (m, k, Y)
            torch.bmm(h.mT, e, out=W2.grad)
            b2.grad.copy_(e.sum(1, keepdim=True))
            dh = torch.bmm(e, W2.mT) * (a > 0)                                         # (m, k, hidden)
            torch.bmm(xb.mT, dh, out=W1.grad)
            b1.grad.copy_(dh.sum(1, keepdim=True))
            opt.step()
        preds[b, n] = torch.baddbmm(b2, torch.baddbmm(b1, xq[b, n][:, None], W1).clamp(min=0), W2)[:, 0]
    return preds

# -----------------------------------------------------------------------------
# the reference approach: one sklearn/xgboost fit per prompt per prefix (optional packages, slow); trained models

def per_fit(make, xs, ys, xq=None):
    xq = xs if xq is None else xq
    X, Y, Q = (t.detach().double().cpu().numpy() for t in (xs, ys, xq))
    preds = torch.zeros(ys.shape, dtype=torch.float64)
    for b, i in itertools.product(range(X.shape[0]), range(1, X.shape[1])):
        fit = make().fit(X[b, :i], Y[b, :i, 0] if Y.shape[-1] == 1 else Y[b, :i])
        preds[b, i] = torch.from_numpy(fit.predict(Q[b, i:i + 1]).reshape(-1))
    return preds.to(ys.dtype)

def _make(kind, **kw):  # optional packages, imported only when such a baseline is asked for
    module, name = dict(lasso=('sklearn.linear_model', 'Lasso'), tree=('sklearn.tree', 'DecisionTreeRegressor'), xgboost=('xgboost', 'XGBRegressor'))[kind]
    return getattr(importlib.import_module(module), name)(**kw)

# a trained checkpoint as baseline (the paper's, for decision trees and sparse parity); evaluate.py's models too

@torch.no_grad()
def model_predict(model, xs, ys, xq=None):
    """prediction i at x token i. A query that differs from x_i (Garg's OOD queries) costs one forward per
    position, on the prompt cut after point i with x_i replaced: causality makes later points irrelevant."""
    dev = next(model.parameters()).device
    xs, ys = xs.to(dev), ys.to(dev)
    if xq is None or torch.equal(xq.to(dev), xs):
        return model(xs, ys).float()
    xq = xq.to(dev)
    return torch.stack([model(torch.cat([xs[:, :i], xq[:, i:i + 1]], 1), ys[:, :i + 1])[:, i] for i in range(xs.shape[1])], 1).float()

# -----------------------------------------------------------------------------
# registry

LASSO_ALPHAS = (1e-4, 1e-3, 1e-2, 0.1, 1.0)  # the reference configs' "lasso_set" (Garg's sweep)
BASELINES = dict(
    zero=zero, least_squares=least_squares, averaging=averaging, knn=knn, retrieval_dict=retrieval_dict,
    parity_bayes=parity_bayes, parity_prior=partial(parity_bayes, context=False), lasso=lasso, **{f'lasso_{a:g}': partial(lasso, alpha=a) for a in LASSO_ALPHAS},
    gd_mlp=gd_mlp, gd_mlp_ref=partial(gd_mlp, steps=100, batch_size=100),
    lasso_sklearn=partial(per_fit, partial(_make, 'lasso', alpha=1e-3, fit_intercept=False, max_iter=100000)),
    decision_tree=partial(per_fit, partial(_make, 'tree', max_depth=4, random_state=0)),  # Garg's greedy tree
    xgboost=partial(per_fit, partial(_make, 'xgboost')),
)
# the baseline of the paper's score per task (docs/paper.md §5); 'model' = a trained run (--baseline_run)
PAPER_BASELINE = dict(linear_regression='least_squares', sparse_linear_regression='lasso', relu2nn_regression='gd_mlp',
                      decision_tree='model', sparse_parity='model', mqar='retrieval_dict')
FALLBACK = dict(decision_tree='knn', sparse_parity='parity_bayes')  # when no trained baseline run is given
# the curves drawn next to a model's, per task (like Garg's plots)
PLOT_BASELINES = dict(linear_regression=('least_squares', 'averaging', 'knn'), sparse_linear_regression=('lasso', 'least_squares', 'knn'),
                      relu2nn_regression=('gd_mlp', 'least_squares', 'knn'), decision_tree=('knn', 'least_squares', 'averaging'),
                      sparse_parity=('parity_bayes', 'parity_prior'), mqar=('retrieval_dict',))
