"""
Garg's out-of-distribution prompts for linear regression (Garg et al. 2022 §1.6; docs/paper.md §2.3), what
`python evaluate.py RUN --ood=...` scores a linear-regression model on: the same w ~ N(0, I) task with shifted
inputs (noisy_y, scaled_x, scaled_y, skewed, half_subspace) or with queries unlike the context (quadrants,
orthogonal, seen_points). Seeded like tasks.py: one CPU torch.Generator, so a seed fixes the prompts on any
device.
"""
import math
from typing import Optional, Tuple, Union

import torch

Tensor = torch.Tensor

OOD_VARIANTS = ("standard", "noisy_y", "scaled_x", "scaled_y", "skewed", "half_subspace",
                "quadrants", "orthogonal", "seen_points")


def _random_orthogonal(d, generator):
    # Haar-uniform orthogonal matrix: QR of a Gaussian, with the signs of R's diagonal folded into Q
    # (plain QR is biased towards particular column signs)
    Q, R = torch.linalg.qr(torch.randn(d, d, generator=generator, dtype=torch.float64))
    return Q * torch.sign(torch.diagonal(R)).unsqueeze(0)  # (d, d)


def _transform(lam, generator):
    # T = U diag(lam) U^T, lam normalised so sum(lam^2) = d: x = z @ T then has covariance
    # U diag(lam^2) U^T and E||x||^2 = d, same as the training distribution (Garg's sample_transformation)
    d = lam.shape[0]
    lam = lam.double() * math.sqrt(d / (lam.double() ** 2).sum())
    U = _random_orthogonal(d, generator)
    return (U * lam.unsqueeze(0) @ U.T).float()  # (d, d)


def sample_ood(variant: str, batch_size: int, n_points: int, n_dims: int, generator: torch.Generator, *,
               device: Union[str, torch.device] = "cpu", scale: float = 2.0,
               noise_std: float = 1.0) -> Tuple[Tensor, Tensor, Optional[Tensor], Tensor]:
    """
    Garg's OOD tests for a linear regression model (w ~ N(0, I), no noise unless noisy_y).
    -> xs (B, N, d), ys (B, N, 1), xq (B, N, d) or None, yq (B, N, 1). prediction i sees the context
    pairs 0..i-1 and the query xq[:, i], and is scored against yq[:, i]. for the distribution-shift
    variants (everything except quadrants, orthogonal, seen_points) xq is None, the query of prediction i
    is x_i itself and yq is ys, so one causal forward pass scores every position; the query variants need a
    pass per position i on (xs[:, :i], ys[:, :i], xq[:, i]).
    """
    if variant not in OOD_VARIANTS:
        raise ValueError(f"unknown OOD variant {variant!r}, expected one of {OOD_VARIANTS}")
    B, N, d = batch_size, n_points, n_dims
    g = generator
    w = torch.randn(B, d, 1, generator=g)  # (B, d, 1)
    xs = torch.randn(B, N, d, generator=g)  # (B, N, d)
    xq = None  # set by the query variants

    if variant == "scaled_x":
        xs = xs * scale  # the zero predictor's error grows to scale^2 * d
    elif variant == "scaled_y":
        w = w * scale
    elif variant == "skewed":
        # covariance eigenvalues ∝ 1/i^2. one U per call (Garg draws one per eval run)
        xs = xs @ _transform(1.0 / torch.arange(1, d + 1), g)
    elif variant == "half_subspace":
        # a random d/2-dim subspace; the normalisation makes the kept eigenvalues 2 so E||x||^2 = d
        lam = torch.zeros(d)
        lam[: d // 2] = 1.0
        xs = xs @ _transform(lam, g)
    elif variant == "quadrants":
        # context x's all in one random orthant per prompt; the query is the plain Gaussian x,
        # so it usually lies in some other orthant
        s = torch.randint(0, 2, (B, 1, d), generator=g).float() * 2 - 1  # (B, 1, d)
        xq = xs
        xs = xs.abs() * s
    elif variant == "orthogonal":
        # query i = the part of x_i orthogonal to span(x_0..x_{i-1}), rescaled to ||x_i||. one QR does
        # all i at once: for the (full rank) matrix [x_0 .. x_{m-1}] = QR, span(x_0..x_{i-1}) =
        # span(q_0..q_{i-1}), so subtract x_i's components along the q_j with j < i.
        # for i >= d the complement is empty (the context already spans R^d), so those queries stay
        # the raw x_i; Garg cuts the eval (and the plot) at d points instead
        m = min(N, d)
        x = xs[:, :m].double()  # (B, m, d) float64: residuals of late i are tiny and cancel badly in fp32
        Q, _ = torch.linalg.qr(x.transpose(1, 2))  # (B, d, m) orthonormal columns
        C = x @ Q  # (B, m, m) C[b, i, j] = x_i . q_j
        C = C * torch.ones(m, m, dtype=C.dtype).tril(-1)  # keep only j < i
        r = x - C @ Q.transpose(1, 2)  # (B, m, d) residual of each x_i
        r = r * (x.norm(dim=-1, keepdim=True) / r.norm(dim=-1, keepdim=True))
        xq = xs.clone()
        xq[:, :m] = r.float()
    elif variant == "seen_points":
        # query i is a copy of a uniformly random earlier x_j, j < i (query 0 has no past: x_0 itself)
        i = torch.arange(N)
        j = (torch.rand(B, N, generator=g) * i).long()  # (B, N) floor(u * i) is uniform on 0..i-1
        j = torch.minimum(j, (i - 1).clamp(min=0))  # u * i can round up to i in fp32
        xq = xs.gather(1, j.unsqueeze(-1).expand(B, N, d))  # (B, N, d)

    ys = xs @ w  # (B, N, 1)
    if variant == "noisy_y":
        # Garg's noisyLR then renormalises y by sqrt(d)/std(batch); we don't, so targets keep the
        # training scale plus noise and the zero predictor's error is d + noise_std^2
        ys = ys + noise_std * torch.randn(ys.shape, generator=g)
    if xq is None:
        return xs.to(device), ys.to(device), None, ys.to(device)
    return xs.to(device), ys.to(device), xq.to(device), (xq @ w).to(device)  # yq (B, N, 1)
