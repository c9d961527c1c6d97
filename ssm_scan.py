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
- "triton": a handwritten Triton kernel, forward and backward, fp32 math (fp64 for fp64), any strides;
  deterministic=True sums dB/dC in a fixed order, not with atomics. CPU tensors: TRITON_INTERPRET=1.
- "auto": triton for CUDA tensors when triton imports, else torch. SSM_SCAN_BACKEND=torch|triton
  overrides "auto" for A/B checks.

`selective_scan_naive`, the per-timestep loop most reference code uses, is the tests' oracle and the benchmark's baseline.

`python ssm_scan.py` checks triton against the reference and prints a timing table.
"""
import importlib.util
import os
import time

import torch
import torch.nn.functional as F

# -----------------------------------------------------------------------------
# pure-PyTorch reference

def _chunk_len(b, d, n, l, cuda=False):
    # time steps per chunk: (T, b, d, n) buffers of ~1M elements on CPU stay in cache across passes (1.5x vs 16M); GPU 16M.
    # At least l/16 steps, so the saved chunk-start states stay within 16 * b*d*n however large b*d*n gets.
    return max(1, min(l, max(-(-l // 16), (1 << (24 if cuda else 20)) // max(1, b * d * n))))


def _chunk(h, u, dt, A, B):
    # one chunk from its incoming state h (b, d, n); u, dt (T, b, d), B (T, b, n) -> decays, inputs, states, each
    # (T, b, d, n), and the outgoing state. The backward calls it again to recompute what the forward did not keep.
    dA, dBu = torch.exp(dt[..., None] * A), (dt * u)[..., None] * B[:, :, None, :]
    hs = torch.empty_like(dA)
    for a, x, o in zip(dA, dBu, hs):       # zip over leading dim = unbind: no per-step index copies
        h = torch.addcmul(x, a, h, out=o)  # h[t] = a[t] * h[t-1] + x[t], written in place
    return dA, dBu, hs, h.clone()  # a copy: the view h = hs[-1] saved for backward would keep all of hs alive


class _ScanTorch(torch.autograd.Function):
    """y = scan(u, dt, A, B, C) on time-major inputs: u, dt (l, b, d); B, C (l, b, n); A (d, n).
    Bias, softplus, the D skip and the z gate stay in plain autograd around this (cheap, elementwise)."""

    @staticmethod
    def forward(ctx, u, dt, A, B, C):
        (l, b, d), n = u.shape, A.shape[1]
        T = _chunk_len(b, d, n, l, u.is_cuda)
        y = u.new_empty(l, b, d)
        h = u.new_zeros(b, d, n)
        h0 = []  # state entering each chunk: all the backward needs to recompute the chunk
        for s in range(0, l, T):
            e = min(s + T, l)
            h0.append(h)
            _, _, hs, h = _chunk(h, u[s:e], dt[s:e], A, B[s:e])
            y[s:e] = (hs.flatten(0, 1) @ C[s:e].flatten(0, 1)[..., None]).view(e - s, b, d)  # sum_n h*C
        ctx.save_for_backward(u, dt, A, B, C, *h0)
        ctx.T = T
        return y

    @staticmethod
    def backward(ctx, gy):
        u, dt, A, B, C, *h0 = ctx.saved_tensors
        (l, b, d), n = u.shape, A.shape[1]
        T = ctx.T
        gy = gy.contiguous()
        du, ddt, dB, dC = torch.empty_like(u), torch.empty_like(dt), torch.empty_like(B), torch.empty_like(C)
        dA = torch.zeros_like(A)
        carry = torch.zeros_like(h0[0])  # a[t+1] * dh[t+1] flowing into the chunk from the right
        bmv = lambda v, m: (v.flatten(0, 1)[:, None, :] @ m.flatten(0, 1)).view(m.shape[0], b, n)  # sum_d v*m
        for c in reversed(range(len(h0))):
            s = c * T
            e = min(s + T, l)
            dAc, dBu, hs, _ = _chunk(h0[c], u[s:e], dt[s:e], A, B[s:e])    # recompute, don't store
            dC[s:e] = bmv(gy[s:e], hs)          # bmm and mul-then-sum below: einsum copies here, ~3x slower on CPU
            dh = gy[s:e, :, :, None] * C[s:e, :, None, :]                  # direct grad into h[t]
            for t in reversed(range(e - s)):                               # dh[t] = gh[t] + a[t+1] dh[t+1]
                dh[t] += carry
                carry = dAc[t] * dh[t]
            hs -= dBu                                                      # h[t] - x[t] = a[t] h[t-1]
            w = dh * hs                                                    # (T, b, d, n)
            dhB = (dh.flatten(0, 1) @ B[s:e].flatten(0, 1)[..., None]).view(e - s, b, d)  # sum_n dh*B
            du[s:e] = dt[s:e] * dhB
            ddt[s:e] = u[s:e] * dhB + (w * A).sum(-1)
            dA += w.mul_(dt[s:e, :, :, None]).sum((0, 1))
            dB[s:e] = bmv(dt[s:e] * u[s:e], dh)
        return du, ddt, dA, dB, dC


def _reference(recurrence, u, delta, A, B, C, D, z, delta_bias, delta_softplus):
    """what both torch scans share: fp32 math (fp64 kept for gradcheck), bias and softplus before the
    recurrence, the D skip and the z gate after it. `recurrence(u, dt, A, B, C)` -> y, all (b, ., l)."""
    dtype_in = u.dtype
    acc = torch.promote_types(torch.float32, dtype_in)
    u, delta, A, B, C = (t.to(acc) for t in (u, delta, A, B, C))
    if delta_bias is not None:
        delta = delta + delta_bias.to(acc)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)  # log(1 + e^x), identity above 20 like mamba's kernel
    y = recurrence(u, delta, A, B, C)
    if D is not None:
        y = y + D.to(acc)[:, None] * u
    if z is not None:
        y = y * F.silu(z.to(acc))
    return y.to(dtype_in)


def _chunked(u, dt, A, B, C):
    tm = lambda x: x.permute(2, 0, 1).contiguous()  # (b, ., l) -> time-major (l, b, .)
    return _ScanTorch.apply(tm(u), tm(dt), A, tm(B), tm(C)).permute(1, 2, 0)  # (b, d, l)


def _naive(u, dt, A, B, C):
    dA = torch.exp(torch.einsum('bdl,dn->bdln', dt, A))
    dBu = torch.einsum('bdl,bnl,bdl->bdln', dt, B, u)
    h = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])
    ys = []
    for i in range(u.shape[2]):
        h = dA[:, :, i] * h + dBu[:, :, i]
        ys.append(torch.einsum('bdn,bn->bd', h, C[:, :, i]))
    return torch.stack(ys, dim=2)


def selective_scan_torch(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """The pure-PyTorch backend. Accepts any strides; returns u's dtype."""
    return _reference(_chunked, u, delta, A, B, C, D, z, delta_bias, delta_softplus)


def selective_scan_naive(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """mamba's selective_scan_ref / mamba-minimal: (b, d, l, n) tensors, a time loop with index slicing,
    plain autograd. Correct and simple, but O(b*d*l*n) saved activations and an O(l^2) backward."""
    return _reference(_naive, u, delta, A, B, C, D, z, delta_bias, delta_softplus)

# -----------------------------------------------------------------------------
# Triton kernel (forward + backward)

if __name__ == "__main__" and not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # `python ssm_scan.py` without a GPU: use the interpreter
HAS_TRITON = importlib.util.find_spec("triton") is not None  # optional: CPU users train with the torch backend
if HAS_TRITON:
    import triton
    import triton.language as tl
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"  # read when @triton.jit decorates, i.e. at import

# One program per (batch, block of BD channels) walks time in chunks of BT steps (docs/scan.md §2.3). Per state n a
# two-value associative scan runs h = a*h + x over the chunk; the state is carried across chunks in registers and saved
# at each chunk's start, (b, d, n_chunks, n): the backward re-runs the forward from there, right to left, plus the
# adjoint scan (docs/scan.md §1.2, with the CUDA kernel's a[t] h[t-1] = h[t] - x[t]: no shifted copy of h), and stores
# nothing else. BT is a constexpr power of two, L a runtime int (not specialised): the curriculum's changing lengths
# reuse one compiled kernel. Core tl.* math only: libdevice fails in the interpreter.
if HAS_TRITON:
    @triton.jit
    def _combine(a1, x1, a2, x2):  # (a1, x1) then (a2, x2) as maps h -> a*h + x: associative, not commutative
        return a1 * a2, a2 * x1 + x2

    @triton.jit
    def _tile(ptr, s, b, d, t, mask, ACC: tl.constexpr):  # (BD, BT) tile of a (b, d, l) tensor with strides s
        return tl.load(ptr + b * s[0] + d[:, None] * s[1] + t[None, :] * s[2], mask=mask, other=0.0).to(ACC)

    @triton.jit
    def _pick(tile, idx, i):  # column i of a tile: registers can't be indexed, so a masked sum
        return tl.sum(tl.where(idx[None, :] == i, tile, 0.0), 1)

    @triton.jit
    def _dt(ptr, s, b, d, t, mask, bias, SOFTPLUS: tl.constexpr, ACC: tl.constexpr):
        # softplus(delta + bias), its derivative. 0 outside mask: a = 1, x = 0, padding passes h through (mamba#368)
        r = _tile(ptr, s, b, d, t, mask, ACC) + bias[:, None]
        sp, dsp = r, tl.full(r.shape, 1.0, ACC)
        if SOFTPLUS:  # log1p(w) as log(p) w/(p-1), p = 1+w: exact even for tiny w (r ~ -7 at mamba's dt init)
            w = tl.exp(tl.minimum(r, 20.0))
            p = 1.0 + w
            sp = tl.where(r > 20.0, r, tl.where(p == 1.0, w, tl.log(p) * (w / tl.where(p == 1.0, 1.0, p - 1.0))))
            dsp = tl.where(r > 20.0, 1.0, tl.sigmoid(r))  # identity above 20, like F.softplus and mamba's kernel
        return tl.where(mask, sp, 0.0), dsp

    @triton.jit(do_not_specialize=["L"])
    def _scan_kernel(u_ptr, dt_ptr, z_ptr, g_ptr, B_ptr, C_ptr, A_ptr, D_ptr, bias_ptr, st_ptr, out_ptr, ddt_ptr, dz_ptr,
                     dB_ptr, dC_ptr, dW_ptr, L, N, n_ch, s_part, su, sdt, sz, sg, so, sB, sC, sA, sst, HAS_Z: tl.constexpr,
                     SOFTPLUS: tl.constexpr, BWD: tl.constexpr, DET: tl.constexpr, ACC: tl.constexpr,
                     BD: tl.constexpr, BT: tl.constexpr, NP: tl.constexpr):
        b, d = tl.program_id(0).to(tl.int64), tl.program_id(1) * BD + tl.arange(0, BD)  # d: (BD,) channels
        dmask, ns, pos = d < n_ch, tl.arange(0, NP), tl.arange(0, BT)
        bias = tl.load(bias_ptr + d, mask=dmask, other=0.0).to(ACC)  # absent D, bias come in as zeros (and get grads)
        Dd = tl.load(D_ptr + d, mask=dmask, other=0.0).to(ACC)
        part = tl.program_id(1).to(tl.int64) * s_part if DET else 0  # DET: a dB/dC buffer per channel block
        carry = tl.zeros((BD, NP), ACC)  # fwd: h entering the chunk; bwd: a[t0] dh[t0] of the chunk to the right
        dA, dD, dbias, nc = tl.zeros((BD, NP), ACC), tl.zeros((BD,), ACC), tl.zeros((BD,), ACC), tl.cdiv(L, BT)
        for i in range(nc):
            c = nc - 1 - i if BWD else i
            t = c * BT + pos
            tok, mask = t < L, dmask[:, None] & (t < L)[None, :]
            u = _tile(u_ptr, su, b, d, t, mask, ACC)  # (BD, BT)
            dt, dsp = _dt(dt_ptr, sdt, b, d, t, mask, bias, SOFTPLUS, ACC)
            dtu, y = dt * u, tl.zeros((BD, BT), ACC)
            zt = _tile(z_ptr, sz, b, d, t, mask, ACC) if HAS_Z else None
            sgz = tl.sigmoid(zt) if HAS_Z else None
            if BWD:  # dt[t+1] gives a[t+1] for the adjoint: reloaded (an L1 hit) rather than shifted in registers
                dtn = _dt(dt_ptr, sdt, b, d, t + 1, dmask[:, None] & (t + 1 < L)[None, :], bias, SOFTPLUS, ACC)[0]
                g = _tile(g_ptr, sg, b, d, t, mask, ACC)
                ybar = g * zt * sgz if HAS_Z else g  # dloss/dy: zero beyond L, so gh and dh are exactly zero there
                S1, S2 = tl.zeros((BD, BT), ACC), tl.zeros((BD, BT), ACC)  # sum_n dh B, sum_n dh A (h - x)
            for n in range(N):  # a runtime loop: static unrolling takes minutes to compile, and spills
                sti = st_ptr + b * sst[0] + d * sst[1] + c * sst[2] + n  # (BD,) the state entering chunk c
                h0 = tl.load(sti, mask=dmask, other=0.0) if BWD else _pick(carry, ns, n)
                A = tl.load(A_ptr + d * sA[0] + n * sA[1], mask=dmask, other=0.0).to(ACC)            # (BD,)
                A2 = A * 1.4426950408889634  # exp(dt A) as exp2(dt A log2 e): a multiply less, as mamba's CUDA kernel
                Bn = tl.load(B_ptr + b * sB[0] + n * sB[1] + t * sB[2], mask=tok, other=0.0).to(ACC)  # (BT,)
                Cn = tl.load(C_ptr + b * sC[0] + n * sC[1] + t * sC[2], mask=tok, other=0.0).to(ACC)
                a, x = tl.exp2(dt * A2[:, None]), dtu * Bn[None, :]  # a in (0, 1]
                x0 = tl.where(pos[None, :] == 0, a * h0[:, None] + x, x)  # fold the incoming state into step 0
                h = tl.associative_scan((a, x0), 1, _combine)[1]  # h[t] = a[t] h[t-1] + x[t]
                y += h * Cn[None, :]
                if BWD:
                    # dh[t] = gh[t] + a[t+1] dh[t+1], a reverse scan; the carry enters at the chunk's last step
                    gh = ybar * Cn[None, :] + tl.where(pos[None, :] == BT - 1, _pick(carry, ns, n)[:, None], 0.0)
                    dh = tl.associative_scan((tl.exp2(dtn * A2[:, None]), gh), 1, _combine, reverse=True)[1]
                    q = dh * (h - x)
                    S1 += dh * Bn[None, :]
                    S2 += A[:, None] * q
                    dA = tl.where(ns[None, :] == n, dA + tl.sum(dt * q, 1)[:, None], dA)
                    carry = tl.where(ns[None, :] == n, _pick(a * dh, pos, 0)[:, None], carry)
                    offs = part + (b * N + n) * L + t  # dB, dC: atomics across channel blocks (DET: one writer each)
                    tl.atomic_add(dB_ptr + offs, tl.sum(dh * dtu, 0), mask=tok, sem="relaxed")
                    tl.atomic_add(dC_ptr + offs, tl.sum(h * ybar, 0), mask=tok, sem="relaxed")
                else:
                    tl.store(sti, h0, mask=dmask)
                    carry = tl.where(ns[None, :] == n, _pick(h, pos, BT - 1)[:, None], carry)
            y += Dd[:, None] * u
            o = b * so[0] + d[:, None] * so[1] + t[None, :] * so[2]
            if BWD:
                ddt = tl.where(mask, (u * S1 + S2) * dsp, 0.0)
                dbias, dD = dbias + tl.sum(ddt, 1), dD + tl.sum(ybar * u, 1)
                tl.store(ddt_ptr + o, ddt.to(ddt_ptr.dtype.element_ty), mask=mask)
                if HAS_Z:
                    tl.store(dz_ptr + o, (g * y * sgz * (1.0 + zt * (1.0 - sgz))).to(dz_ptr.dtype.element_ty), mask=mask)
                y = dt * S1 + Dd[:, None] * ybar
            elif HAS_Z:
                y *= zt * sgz
            tl.store(out_ptr + o, y.to(out_ptr.dtype.element_ty), mask=mask)  # out = y * silu(z), or du
        if BWD:  # per-(b, d) partials of dA | dD | dbias, (b, d, n + 2), summed over batch on the host: deterministic
            w = (b * n_ch + d) * (N + 2)
            tl.store(dW_ptr + w[:, None] + ns[None, :], dA, mask=dmask[:, None] & (ns < N)[None, :])
            tl.store(dW_ptr + w + N, dD, mask=dmask)
            tl.store(dW_ptr + w + N + 1, dbias, mask=dmask)

# channel-contiguous? -> BT, (BD, warps) forward, (BD, warps) backward. NOT tuned (no GPU was lent while writing this):
# docs/scan.md §2.3's picks, compiled ahead of time for sm_90 (b=64 d=1024 n=16, fp32 and bf16), registers fwd/bwd with
# triton 3.9 | 3.6: channel-contiguous 130/182 | 128/219, time-contiguous 108/208 | 158/250, no spills (bar 8 bytes).
_TILES = {True: (32, (16, 4), (16, 4)), False: (128, (4, 4), (4, 4))}


def _launch(u, delta, A, B, C, D, z, bias, st, g, softplus, det, chan):
    # g None: the forward, returns out; else the backward, returns the grads of u, delta, A, B, C, D, z, bias
    (b, nd, l), n = u.shape, A.shape[1]
    BT, (BD, W) = _TILES[chan][0], _TILES[chan][1 if g is None else 2]
    like = lambda x: u.new_empty(b, l, nd, dtype=x.dtype).transpose(1, 2) if chan else u.new_empty(b, nd, l, dtype=x.dtype)
    outs = [like(u)] + ([st] * 5 if g is None else [like(delta), like(u if z is None else z)])
    if g is not None:  # dB, dC (fp32, fp64): one buffer for the atomics, or (det) one per channel block, summed below
        dBC = u.new_zeros(2, triton.cdiv(nd, BD) if det else 1, b, n, l, dtype=st.dtype)
        outs += [dBC[0], dBC[1], st.new_empty(b, nd, n + 2)]
    opt = lambda x: u if x is None else x  # absent z, g: any valid pointer, never read
    _scan_kernel[(b, triton.cdiv(nd, BD))](
        u, delta, opt(z), opt(g), B, C, A, D, bias, st, *outs, l, n, nd, b * n * l, u.stride(), delta.stride(),
        opt(z).stride(), opt(g).stride(), outs[0].stride(), B.stride(), C.stride(), A.stride(), st.stride()[:3],
        HAS_Z=z is not None, SOFTPLUS=softplus, BWD=g is not None, DET=det and g is not None,
        ACC=tl.float64 if st.dtype == torch.float64 else tl.float32, BD=BD, BT=BT, NP=triton.next_power_of_2(n),
        num_warps=W, enable_fp_fusion=True)  # fusion pinned: Triton 3.10 flips the default
    if g is None:
        return outs[0]
    (dB, dC), dW = dBC.sum(1), outs[5].sum(0)  # dW: dA | dD | dbias
    return (outs[0], outs[1], dW[:, :n].to(A.dtype), dB.to(B.dtype), dC.to(C.dtype), dW[:, n].to(D.dtype),
            None if z is None else outs[2], dW[:, n + 1].to(bias.dtype))


class _ScanTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, bias, softplus, det):
        chan = delta.stride(1) == 1 and delta.stride(2) != 1  # a transposed (b, l, d) Linear output, as in model.py
        (b, nd, l), acc = u.shape, torch.promote_types(torch.float32, u.dtype)
        st = u.new_empty(b, nd, triton.cdiv(l, _TILES[chan][0]), A.shape[1], dtype=acc)  # the states at chunk starts
        ctx.save_for_backward(u, delta, A, B, C, D, z, bias, st)
        ctx.cfg = softplus, det, chan
        return _launch(u, delta, A, B, C, D, z, bias, st, None, softplus, det, chan)

    @staticmethod
    def backward(ctx, g):
        return *_launch(*ctx.saved_tensors, g, *ctx.cfg), None, None

# -----------------------------------------------------------------------------
# dispatch

BACKENDS = ("auto", "torch", "triton")


def resolve_backend(backend, device):
    """What "auto" means on `device`. CPU takes torch even under TRITON_INTERPRET=1 (set for every test): ask for triton."""
    backend = os.environ.get("SSM_SCAN_BACKEND", "auto") if backend == "auto" else backend
    if backend not in BACKENDS:
        raise ValueError(f"selective_scan backend must be one of {BACKENDS}, got {backend!r}")
    return ("triton" if HAS_TRITON and device.type == "cuda" else "torch") if backend == "auto" else backend


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, *,
                   backend="auto", deterministic=False):
    """See the module docstring. `deterministic` only matters for triton (fixed-order dB/dC sums)."""
    if resolve_backend(backend, u.device) == "torch":
        return selective_scan_torch(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    if not HAS_TRITON or (u.device.type != "cuda" and not INTERPRET):
        raise RuntimeError("the triton backend needs triton, and CUDA tensors or TRITON_INTERPRET=1 set before "
                           "ssm_scan is imported (CPU tensors run in the interpreter)")
    contig = lambda x: u.new_zeros(u.shape[1], dtype=A.dtype) if x is None else x.contiguous()  # D, bias (d,): stride 1
    return _ScanTriton.apply(u, delta, A, B, C, contig(D), z, contig(delta_bias), bool(delta_softplus), deterministic)

# -----------------------------------------------------------------------------
# `python ssm_scan.py`: triton vs the reference (output and every grad), then a Markdown timing table

def _case(b, d, l, n, dtype, device, seed=0):
    # model.py's layout: u, delta, z transposed (b, l, d) activations; B, C slices of one (b, l, 2n) tensor
    r = lambda *s, gen=torch.Generator().manual_seed(seed): torch.randn(*s, generator=gen).to(device)
    act, BC = lambda: r(b, l, d).to(dtype).transpose(1, 2), r(b, l, 2 * n).to(dtype).transpose(1, 2)
    x = dict(u=act(), delta=act() / 2 - 2, A=-r(d, n).exp(), B=BC[:, :n], C=BC[:, n:], D=r(d), z=act(), delta_bias=r(d) / 2)
    return {k: v.detach().requires_grad_() for k, v in x.items()}, r(b, d, l).to(dtype)


def _run(fn, x, g, **kw):  # [out, grads of every input]
    out = fn(**x, **{"delta_softplus": True, **kw})
    return [out, *torch.autograd.grad(out, list(x.values()), g)]


def bench(fn, x, g, reps):
    """[fwd ms, GB/s, fwd+bwd ms, GB/s, activation MB, peak MB]: ms are medians of reps calls (wall clock around a device
    sync, ~10 us included), GB/s uses docs/scan.md §2.4's minimal traffic, MB held from forward to backward and at peak"""
    res, (b, d, l), n, e = [], g.shape, x["A"].shape[1], g.element_size()
    traffic = [e * (4 * b * d * l + 2 * b * n * l), e * (11 * b * d * l + 4 * b * n * l) + 8 * b * n * l]  # bytes
    sync = torch.cuda.synchronize if g.is_cuda else (lambda: None)
    for step, by in zip((lambda: fn(**x, delta_softplus=True), lambda: _run(fn, x, g)), traffic):
        ts = []
        for _ in range(reps + 3):  # 3 warm-up calls
            sync(); t0 = time.perf_counter(); step(); sync(); ts.append(1e3 * (time.perf_counter() - t0))
        res += [sorted(ts[3:])[reps // 2], by / sorted(ts[3:])[reps // 2] / 1e6]
    if g.is_cuda:
        sync(); m0 = torch.cuda.memory_allocated(); torch.cuda.reset_peak_memory_stats()
        out = fn(**x, delta_softplus=True)
        res.append((torch.cuda.memory_allocated() - m0) / 2**20)
        torch.autograd.grad(out, list(x.values()), g)
        res.append((torch.cuda.max_memory_allocated() - m0) / 2**20)
    return res + [float("nan")] * (6 - len(res))


if __name__ == "__main__":
    cuda, tri = torch.cuda.is_available() and HAS_TRITON and not INTERPRET, lambda **kw: selective_scan(**kw, backend="triton")
    dev, shape = ("cuda", (64, 512, 202, 16)) if cuda else ("cpu", (1, 5, 37, 2))  # cpu: 2 chunks, a partial block
    print(f"torch {torch.__version__}, triton {triton.__version__ if HAS_TRITON else '-'}, " + (torch.cuda.get_device_name()
          if cuda else "NO CUDA GPU: Triton timings NOT measured. Instead: the kernel in the interpreter against the "
          "reference at a tiny shape, and the torch backend against selective_scan_naive on CPU") + "\n")
    print(f"| {shape} max err / max ref | out | du | ddelta | dA | dB | dC | dD | dz | ddelta_bias |\n" + "|---" * 10 + "|")
    for dtype, det in [(torch.float32, False), (torch.float32, True), (torch.bfloat16, False)]:
        x, g = _case(*shape, dtype, dev)
        ref = _run(selective_scan_torch, {k: v.detach().double().requires_grad_() for k, v in x.items()}, g.double())
        err = [(a.double() - r).abs().max() / r.abs().max() for a, r in zip(_run(tri, x, g, deterministic=det), ref)]
        print(f"| triton {str(dtype)[6:]}{' deterministic' if det else ''} | " + " | ".join(f"{v:.1e}" for v in err) + " |")
    fns = dict(triton=(tri, 50), torch=(selective_scan_torch, 50), naive=(selective_scan_naive, 5))
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
        fns["mamba_ssm"] = (selective_scan_fn, 50)
    except Exception as e:  # expected without a CUDA build of mamba-ssm (docs/scan.md §3)
        print(f"\nmamba_ssm: no comparison ({type(e).__name__}: {e})")
    b, ds, dts = (64, (1024, 512), (torch.float32, torch.bfloat16)) if cuda else (2, (256,), (torch.float32,))
    fns = fns if cuda else dict(torch=(selective_scan_torch, 3), naive=(selective_scan_naive, 3))
    print("\n| b | d | L | dtype | backend | reps | fwd ms | fwd GB/s | fwd+bwd ms | fwd+bwd GB/s | act MB | peak MB | "
          "fwd+bwd speedup vs torch |\n" + "|---" * 13 + "|")
    for d, dtype, l in [(d, dtype, l) for d in ds for dtype in dts for l in (82, 202, 282)]:
        x, g = _case(b, d, l, 16, dtype, dev)
        rows = {k: bench(fn, x, g, reps) for k, (fn, reps) in fns.items()}
        for k, r in rows.items():
            print(f"| {b} | {d} | {l} | {str(dtype)[6:]} | {k} | {fns[k][1]} | " + " | ".join(f"{v:.3g}" for v in r)
                  + f" | {rows['torch'][2] / r[2]:.1f}x |", flush=True)
