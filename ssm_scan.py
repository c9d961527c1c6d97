"""
Selective scan (Mamba-1 "S6"), the recurrent core of every Mamba block in model.py.

    out = selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                         backend="auto")

Semantics are mamba_ssm's `selective_scan_fn` (real A, variable B/C, one group), per batch b,
channel d, state n, time t:

    dt[t]  = softplus(delta[t] + delta_bias[d])      (bias / softplus optional)
    h[t]   = exp(dt[t] * A[d,n]) * h[t-1] + dt[t] * B[n,t] * u[t]      h[-1] = 0
    y[t]   = sum_n C[n,t] * h[t] + D[d] * u[t]
    out[t] = y[t] * silu(z[t])

glossary (lowercase shapes so A, B, C, D keep their paper names):
    b batch, d channels (d_inner = expand * n_embd), l sequence length, n d_state (16)
    u, delta, z: (b, d, l)   A: (d, n)   B, C: (b, n, l)   D, delta_bias: (d,)

Backends
- "torch": pure PyTorch. A hand-written autograd.Function whose backward recomputes the states
  chunk by chunk instead of storing the (b, d, l, n) tensor, so a paper-size Mamba (64 x 1024 x 282
  x 16) trains in a few GB on CPU. The time loop iterates `unbind`-style slices of time-major
  buffers: index-slicing a materialised tensor inside the loop (what mamba's selective_scan_ref
  does) makes autograd's backward quadratic in l (docs/scan.md §1.3). Math in fp32, or fp64 for
  fp64 inputs, so gradcheck is meaningful.
- "triton": the handwritten Triton kernel (forward + backward), used for CUDA tensors.
- "auto": triton for CUDA tensors when triton imports (or under TRITON_INTERPRET=1), else torch.
  The environment variable SSM_SCAN_BACKEND=torch|triton overrides "auto" for A/B checks.

`selective_scan_naive` is the straightforward per-timestep loop most reference code uses (plain
autograd, index slicing). It is the oracle in tests and the "before" column of the benchmark.

`python ssm_scan.py` checks the backends against each other and prints a timing table.
"""
import os
import time

import torch
import torch.nn.functional as F

# -----------------------------------------------------------------------------
# pure-PyTorch reference

def _chunk_len(b, d, n, l):
    # time steps per chunk: keep each (T, b, d, n) work buffer around 16M elements (64 MB in fp32)
    return max(1, min(l, (1 << 24) // max(1, b * d * n)))


def _states(h, dA, dBu, out):
    # run the recurrence over one chunk; dA, dBu, out: (T, b, d, n), h: (b, d, n) the incoming state
    for a, x, o in zip(dA, dBu, out):     # zip over leading dim = unbind: no per-step index copies
        torch.addcmul(x, a, h, out=o)    # h[t] = a[t] * h[t-1] + x[t], written in place
        h = o
    return h


class _ScanTorch(torch.autograd.Function):
    """y = scan(u, dt, A, B, C) on time-major inputs: u, dt (l, b, d); B, C (l, b, n); A (d, n).
    Bias, softplus, the D skip and the z gate stay in plain autograd around this (cheap, elementwise)."""

    @staticmethod
    def forward(ctx, u, dt, A, B, C):
        l, b, d = u.shape
        n = A.shape[1]
        T = _chunk_len(b, d, n, l)
        y = u.new_empty(l, b, d)
        h = u.new_zeros(b, d, n)
        h0 = []  # state entering each chunk: all the backward needs to recompute the chunk
        for s in range(0, l, T):
            e = min(s + T, l)
            h0.append(h)
            dA = torch.exp(dt[s:e, :, :, None] * A)                       # (T, b, d, n)
            dBu = (dt[s:e] * u[s:e])[..., None] * B[s:e, :, None, :]      # (T, b, d, n)
            hs = torch.empty_like(dA)
            h = _states(h, dA, dBu, hs)
            y[s:e] = (hs.flatten(0, 1) @ C[s:e].flatten(0, 1)[..., None]).view(e - s, b, d)  # sum_n h*C
        ctx.save_for_backward(u, dt, A, B, C, *h0)
        ctx.T = T
        return y

    @staticmethod
    def backward(ctx, gy):
        u, dt, A, B, C, *h0 = ctx.saved_tensors
        l, b, d = u.shape
        T = ctx.T
        gy = gy.contiguous()
        du, ddt, dB, dC = torch.empty_like(u), torch.empty_like(dt), torch.empty_like(B), torch.empty_like(C)
        dA = torch.zeros_like(A)
        carry = torch.zeros_like(h0[0])  # a[t+1] * dh[t+1] flowing into the chunk from the right
        for c in reversed(range(len(h0))):
            s = c * T
            e = min(s + T, l)
            dAc = torch.exp(dt[s:e, :, :, None] * A)
            dBu = (dt[s:e] * u[s:e])[..., None] * B[s:e, :, None, :]
            hs = torch.empty_like(dAc)
            _states(h0[c], dAc, dBu, hs)                                   # recompute, don't store
            dC[s:e] = torch.einsum('tbd,tbdn->tbn', gy[s:e], hs)
            dh = gy[s:e, :, :, None] * C[s:e, :, None, :]                  # direct grad into h[t]
            for t in reversed(range(e - s)):                               # dh[t] = gh[t] + a[t+1] dh[t+1]
                dh[t] += carry
                carry = dAc[t] * dh[t]
            hs -= dBu                                                      # h[t] - x[t] = a[t] h[t-1]
            w = dh * hs                                                    # (T, b, d, n)
            dhB = (dh.flatten(0, 1) @ B[s:e].flatten(0, 1)[..., None]).view(e - s, b, d)  # sum_n dh*B
            du[s:e] = dt[s:e] * dhB
            ddt[s:e] = u[s:e] * dhB + torch.einsum('tbdn,dn->tbd', w, A)
            dA += torch.einsum('tbdn,tbd->dn', w, dt[s:e])
            dB[s:e] = torch.einsum('tbdn,tbd->tbn', dh, dt[s:e] * u[s:e])
        return du, ddt, dA, dB, dC


def selective_scan_torch(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """The pure-PyTorch backend. Accepts any strides; returns u's dtype."""
    dtype_in = u.dtype
    acc = torch.promote_types(torch.float32, dtype_in)  # fp32 math, fp64 kept for gradcheck
    u, delta, B, C = u.to(acc), delta.to(acc), B.to(acc), C.to(acc)
    if delta_bias is not None:
        delta = delta + delta_bias.to(acc)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)  # log(1 + e^x), identity above 20 like mamba's kernel
    tm = lambda x: x.permute(2, 0, 1).contiguous()  # (b, ., l) -> time-major (l, b, .)
    y = _ScanTorch.apply(tm(u), tm(delta), A.to(acc), tm(B), tm(C)).permute(1, 2, 0)  # (b, d, l)
    if D is not None:
        y = y + D.to(acc)[:, None] * u
    if z is not None:
        y = y * F.silu(z.to(acc))
    return y.to(dtype_in)


def selective_scan_naive(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """The straightforward reference (mamba's selective_scan_ref, mamba-minimal): materialise
    exp(dt*A) and dt*B*u as (b, d, l, n), loop over time with index slicing, plain autograd.
    Correct and simple, but O(b*d*l*n) saved activations and an O(l^2) backward."""
    dtype_in = u.dtype
    acc = torch.promote_types(torch.float32, dtype_in)
    u, delta, A, B, C = u.to(acc), delta.to(acc), A.to(acc), B.to(acc), C.to(acc)
    if delta_bias is not None:
        delta = delta + delta_bias.to(acc)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    dA = torch.exp(torch.einsum('bdl,dn->bdln', delta, A))
    dBu = torch.einsum('bdl,bnl,bdl->bdln', delta, B, u)
    h = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])
    ys = []
    for i in range(u.shape[2]):
        h = dA[:, :, i] * h + dBu[:, :, i]
        ys.append(torch.einsum('bdn,bn->bd', h, C[:, :, i]))
    y = torch.stack(ys, dim=2)
    if D is not None:
        y = y + D.to(acc)[:, None] * u
    if z is not None:
        y = y * F.silu(z.to(acc))
    return y.to(dtype_in)

# -----------------------------------------------------------------------------
# Triton kernel (forward + backward)

try:
    import triton
    import triton.language as tl
    HAS_TRITON = True
except ImportError:  # triton is optional: CPU users train with the torch backend
    HAS_TRITON = False
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"  # read at import, like @triton.jit does

# (the Triton kernel lands here: see issue #4)

# -----------------------------------------------------------------------------
# dispatch

BACKENDS = ("auto", "torch", "triton")


def resolve_backend(backend, device):
    """Which backend "auto" means for tensors on `device`."""
    if backend == "auto":
        backend = os.environ.get("SSM_SCAN_BACKEND", "auto")
    if backend not in BACKENDS:
        raise ValueError(f"selective_scan backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        backend = "triton" if HAS_TRITON and _triton_ready() and (device.type == "cuda" or INTERPRET) else "torch"
    return backend


def _triton_ready():
    return "selective_scan_triton" in globals()


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, *,
                   backend="auto", deterministic=False):
    """See the module docstring. `deterministic` only matters for triton (fixed-order dB/dC sums)."""
    backend = resolve_backend(backend, u.device)
    if backend == "triton":
        if not (HAS_TRITON and _triton_ready()):
            raise RuntimeError("selective_scan(backend='triton'): triton is not importable here")
        return selective_scan_triton(u, delta, A, B, C, D, z, delta_bias, delta_softplus, deterministic=deterministic)
    return selective_scan_torch(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
