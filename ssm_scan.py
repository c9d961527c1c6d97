"""
Selective scan (Mamba-1 "S6"), the recurrent core of every Mamba block in model.py.

    out = selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                         backend="auto", deterministic=False, return_last_state=False)

Semantics are mamba_ssm's `selective_scan_fn` (real A, variable B/C, one group), per batch b,
channel d, state n, time t:

    dt[t]  = softplus(delta[t] + delta_bias[d])      (bias / softplus optional)
    a[t]   = exp(dt[t] * A[d,n])                     the decay, in (0, 1] since A < 0 and dt > 0
    x[t]   = dt[t] * B[n,t] * u[t]                   the input of the state
    h[t]   = a[t] * h[t-1] + x[t]                    h[-1] = 0
    y[t]   = sum_n C[n,t] * h[t] + D[d] * u[t]
    out[t] = y[t] * silu(z[t])

glossary (lowercase shapes so A, B, C, D keep their paper names):
    b batch, d channels (d_inner = expand * n_embd), l sequence length, n d_state (16)
    u, delta, z: (b, d, l)   A: (d, n)   B, C: (b, n, l)   D, delta_bias: (d,)
return_last_state=True returns (out, h[l-1]) with the state (b, d, n) in fp32 (fp64 for fp64 inputs), as
mamba_ssm does; no gradient flows through the state.

Backends, one contract (any strides in, u's dtype out, math in fp32, or fp64 for fp64 inputs):
- "torch": pure PyTorch, the reference. An autograd.Function whose backward recomputes the states chunk
  by chunk from the states saved at chunk starts instead of storing the (b, d, l, n) tensor.
- "cpu": a fused C++ loop (ssm_scan_cpu.cpp; its build, cache and glue in ssm_scan_cpu.py), compiled on
  first use with the system's C++ compiler and cached; the same recompute-from-chunk-starts backward,
  bitwise repeatable whatever the thread count.
- "triton": a handwritten Triton kernel pair, forward and backward, on CUDA tensors (CPU tensors under
  TRITON_INTERPRET=1, set before this module is imported: how the tests run it).
- "auto": triton for CUDA tensors, cpu for CPU tensors; if that kernel cannot be built or launched, the
  torch backend, with one line on stderr saying why. SSM_SCAN_BACKEND=torch|cpu|triton overrides "auto".
  A default CPU run therefore trains through the C++ kernel: an edit to the torch reference alone changes
  it only with backend="torch" (--scan_backend=torch).
`selective_scan_naive`, the per-timestep loop most reference code uses, is the tests' oracle. Reading order:
the reference, the Triton pair, the dispatch. What guards them (the input checks, auto's probe, the custom op
under torch.compile) is ssm_scan_guard.py. `python ssm_scan.py` (= `python bench.py --sections=check,scan`)
checks the kernels against the fp64 reference, then times them.

The backward, derived (every backend computes this). With g = dloss/dout and sigma the sigmoid:
    ybar[t] = g[t] * silu(z[t])                                  dloss/dy
    dz[t]   = g[t] * y[t] * sigma(z) * (1 + z (1 - sigma(z)))
    dh[t]   = ybar[t] C[n,t] + a[t+1] dh[t+1],  dh[l-1] = ybar C  the adjoint: a scan run backwards in time
    dC[n,t] = sum_d ybar[t] h[t]          dB[n,t] = sum_d dh[t] dt[t] u[t]
    du[t]   = D ybar[t] + dt[t] sum_n dh[t] B[n,t]
    ddt[t]  = sum_n dh[t] (u[t] B[n,t] + A[d,n] a[t] h[t-1])
    dA[d,n] = sum_{b,t} dh[t] dt[t] a[t] h[t-1]       dD[d] = sum_{b,t} ybar[t] u[t]
    ddelta  = ddt * sigma(delta + bias) (softplus' derivative; 1 above 20), dbias[d] = sum_{b,t} ddelta
The terms in a[t] h[t-1] need the previous state while the adjoint walks time backwards. From the
recurrence, a[t] h[t-1] = h[t] - x[t]: the current state suffices, no shifted copy of h is kept (the
trick of mamba's CUDA kernel). Only the states at chunk starts are saved in the forward; the backward
re-runs each chunk's forward from its saved state, right to left, then the adjoint scan over it.
"""
import importlib.util
import os
import sys
from typing import Any, Optional

import torch
import torch.nn.functional as F

from ssm_scan_cpu import selective_scan_cpu
from ssm_scan_guard import check_inputs, fallbacks, probe, scan_op

Tensor = torch.Tensor
# what selective_scan and its backends return: out (b, d, l), or with return_last_state=True the pair (out,
# the last state (b, d, n))
ScanOut = Any

# -----------------------------------------------------------------------------
# pure-PyTorch reference

def _chunk_len(b, d, n, l, cuda=False):
    # time steps per chunk: (T, b, d, n) buffers of ~1M elements on CPU stay in cache across passes (1.5x vs
    # 16M); GPU 16M. At least l/16 steps, so the saved chunk-start states stay within 16 * b*d*n however large
    # b*d*n gets.
    per_chunk = (1 << (24 if cuda else 20)) // max(1, b * d * n)
    return max(1, min(l, max(-(-l // 16), per_chunk)))


def _chunk(h, u, dt, A, B):
    # one chunk from its incoming state h (b, d, n); u, dt (T, b, d), B (T, b, n) -> decays, inputs, states,
    # each (T, b, d, n), and the outgoing state. The backward calls it again to recompute what the forward
    # dropped.
    dA = torch.exp(dt[..., None] * A)
    dBu = (dt * u)[..., None] * B[:, :, None, :]
    hs = torch.empty_like(dA)
    for a, x, o in zip(dA, dBu, hs):       # zip over leading dim = unbind: no per-step index copies
        h = torch.addcmul(x, a, h, out=o)  # h[t] = a[t] * h[t-1] + x[t], written in place
    return dA, dBu, hs, h.clone()  # a copy: the view h = hs[-1] saved for backward would keep all of hs alive


class _ScanTorch(torch.autograd.Function):
    """y, last state = scan(u, dt, A, B, C) on time-major inputs: u, dt (l, b, d); B, C (l, b, n); A (d, n).
    Bias, softplus, the D skip and the z gate stay in plain autograd around this (cheap, elementwise)."""

    @staticmethod
    def forward(ctx, u, dt, A, B, C):
        l, b, d = u.shape
        n = A.shape[1]
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
        ctx.mark_non_differentiable(h)
        return y, h

    @staticmethod
    def backward(ctx, gy, _glast):
        u, dt, A, B, C, *h0 = ctx.saved_tensors
        l, b, d = u.shape
        n = A.shape[1]
        T = ctx.T
        gy = gy.contiguous()
        du = torch.empty_like(u)
        ddt = torch.empty_like(dt)
        dB = torch.empty_like(B)
        dC = torch.empty_like(C)
        dA = torch.zeros_like(A)
        dh_next = torch.zeros_like(h0[0])  # a[t+1] * dh[t+1], flowing into the chunk from its right

        def sum_over_d(v, m):  # (T, b, d) x (T, b, d, n) -> (T, b, n): sum_d v * m as one bmm
            return (v.flatten(0, 1)[:, None, :] @ m.flatten(0, 1)).view(m.shape[0], b, n)

        for c in reversed(range(len(h0))):
            s = c * T
            e = min(s + T, l)
            dAc, dBu, hs, _ = _chunk(h0[c], u[s:e], dt[s:e], A, B[s:e])  # recompute, don't store
            # bmm and mul-then-sum below: einsum copies here, ~3x slower on CPU
            dC[s:e] = sum_over_d(gy[s:e], hs)
            dh = gy[s:e, :, :, None] * C[s:e, :, None, :]                 # direct grad into h[t]
            for t in reversed(range(e - s)):                              # dh[t] = gh[t] + a[t+1] dh[t+1]
                dh[t] += dh_next
                dh_next = dAc[t] * dh[t]
            hs -= dBu                                                     # h[t] - x[t] = a[t] h[t-1]
            w = dh * hs                                                   # (T, b, d, n)
            dhB = (dh.flatten(0, 1) @ B[s:e].flatten(0, 1)[..., None]).view(e - s, b, d)  # sum_n dh*B
            du[s:e] = dt[s:e] * dhB
            ddt[s:e] = u[s:e] * dhB + (w * A).sum(-1)
            dA += w.mul_(dt[s:e, :, :, None]).sum((0, 1))
            dB[s:e] = sum_over_d(dt[s:e] * u[s:e], dh)
        return du, ddt, dA, dB, dC


def _reference(recurrence, u, delta, A, B, C, D, z, delta_bias, delta_softplus):
    """what the torch and cpu scans share: fp32 math (fp64 kept for gradcheck), bias and softplus before
    the recurrence, the D skip and the z gate after it. `recurrence(u, dt, A, B, C)` -> y (b, d, l), last
    state (b, d, n). Returns out in u's dtype and the last state."""
    dtype_in = u.dtype
    acc = torch.promote_types(torch.float32, dtype_in)
    u = u.to(acc)
    delta = delta.to(acc)
    A = A.to(acc)
    B = B.to(acc)
    C = C.to(acc)
    if delta_bias is not None:
        delta = delta + delta_bias.to(acc)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)  # log(1 + e^x), identity above 20 like mamba's kernel
    y, last = recurrence(u, delta, A, B, C)
    if D is not None:
        y = y + D.to(acc)[:, None] * u
    if z is not None:
        y = y * F.silu(z.to(acc))
    return y.to(dtype_in), last


def _chunked(u, dt, A, B, C):
    def time_major(x):  # (b, ., l) -> (l, b, .)
        return x.permute(2, 0, 1).contiguous()
    y, last = _ScanTorch.apply(time_major(u), time_major(dt), A, time_major(B), time_major(C))
    return y.permute(1, 2, 0), last  # (b, d, l), (b, d, n)


def _naive(u, dt, A, B, C):
    dA = torch.exp(torch.einsum('bdl,dn->bdln', dt, A))
    dBu = torch.einsum('bdl,bnl,bdl->bdln', dt, B, u)
    h = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])
    ys = []
    for i in range(u.shape[2]):
        h = dA[:, :, i] * h + dBu[:, :, i]
        ys.append(torch.einsum('bdn,bn->bd', h, C[:, :, i]))
    return torch.stack(ys, dim=2), h.detach()


def selective_scan_torch(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
                         D: Optional[Tensor] = None, z: Optional[Tensor] = None,
                         delta_bias: Optional[Tensor] = None, delta_softplus: bool = False,
                         return_last_state: bool = False) -> ScanOut:
    """The pure-PyTorch backend. Accepts any strides; returns u's dtype."""
    out, last = _reference(_chunked, u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    return (out, last) if return_last_state else out


def selective_scan_naive(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
                         D: Optional[Tensor] = None, z: Optional[Tensor] = None,
                         delta_bias: Optional[Tensor] = None, delta_softplus: bool = False,
                         return_last_state: bool = False) -> ScanOut:
    """mamba's selective_scan_ref / mamba-minimal: (b, d, l, n) tensors, a time loop with index slicing,
    plain autograd. Correct and simple, but O(b*d*l*n) saved activations and an O(l^2) backward."""
    out, last = _reference(_naive, u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    return (out, last) if return_last_state else out

# -----------------------------------------------------------------------------
# Triton kernels: a forward and a backward (their design: docs/scan.md §2)
#
# One program owns a batch row and BD channels with all NP states (n rounded up to a power of two) and walks
# time in chunks of BT steps, a chunk being one (BT, NP, BD) block: time stays inside each thread, channels go
# to the lanes. The recurrence is one two-value associative scan along time; the backward re-runs each chunk
# from its saved start state, then the adjoint as a reverse scan (the derivation: the module docstring). L is
# a runtime int, not specialised, so the curriculum's lengths share one build; core tl.* math only, since
# libdevice fails in the interpreter.

# optional: CPU users train with the other backends
HAS_TRITON = importlib.util.find_spec("triton") is not None
if HAS_TRITON:
    import triton
    import triton.language as tl
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"  # read when @triton.jit decorates, i.e. at import

if HAS_TRITON:
    @triton.jit
    def _combine(a1, x1, a2, x2):  # (a1, x1) then (a2, x2) as maps h -> a*h + x: associative, not commutative
        return a1 * a2, a2 * x1 + x2

    @triton.jit
    def _tile(ptr, s, b, d, t, mask, ACC: tl.constexpr):  # (BT, BD) tile of a (b, d, l) tensor with strides s
        return tl.load(ptr + b * s[0] + d[None, :] * s[1] + t[:, None] * s[2], mask=mask, other=0.0).to(ACC)

    @triton.jit
    def _bc_tile(ptr, s, b, ns, t, mask, ACC: tl.constexpr):  # (BT, NP) tile of B or C, (b, n, l) strides s
        return tl.load(ptr + b * s[0] + ns[None, :] * s[1] + t[:, None] * s[2], mask=mask, other=0.0).to(ACC)

    @triton.jit
    def _at(block, pos3, i):  # (NP, BD) = block[i] of a (BT, NP, BD) block: one nonzero term, so exact
        return tl.sum(tl.where(pos3 == i, block, 0.0), 0)

    @triton.jit
    def _dt(ptr, s, b, d, t, mask, bias, SOFTPLUS: tl.constexpr, ACC: tl.constexpr):
        # softplus(delta + bias) and its derivative. 0 outside mask: a = 1, x = 0, padding passes h through
        # (mamba#368)
        r = _tile(ptr, s, b, d, t, mask, ACC) + bias[None, :]
        sp = r
        dsp = tl.full(r.shape, 1.0, ACC)
        if SOFTPLUS:  # log1p(w) as log(p) w/(p-1), p = 1+w: exact even for tiny w (r ~ -7 at mamba's dt init)
            w = tl.exp(tl.minimum(r, 20.0))
            p = 1.0 + w
            log1p_w = tl.where(p == 1.0, w, tl.log(p) * (w / tl.where(p == 1.0, 1.0, p - 1.0)))
            sp = tl.where(r > 20.0, r, log1p_w)
            # identity above 20, like F.softplus and mamba's kernel
            dsp = tl.where(r > 20.0, 1.0, tl.sigmoid(r))
        return tl.where(mask, sp, 0.0), dsp

    @triton.jit
    def _chunk_states(dt, dtu, h0, A2, Bt, pos3):
        # one chunk, every state at once, (BT, NP, BD): decays a = exp2(dt A log2 e), inputs x = dt u B and
        # states h[t] = a[t] h[t-1] + x[t] from the (NP, BD) state h0 entering the chunk, folded into step 0
        a = tl.exp2(dt[:, None, :] * A2[None, :, :])  # in (0, 1]
        x = dtu[:, None, :] * Bt[:, :, None]
        x0 = tl.where(pos3 == 0, a * h0[None, :, :] + x, x)
        h = tl.associative_scan((a, x0), 0, _combine)[1]
        return a, x, h

    @triton.jit(do_not_specialize=["L"])
    def _scan_fwd_kernel(u_ptr, dt_ptr, z_ptr, B_ptr, C_ptr, A_ptr, D_ptr, bias_ptr, st_ptr, out_ptr,
                         last_ptr, L, N, n_ch, su, sdt, sz, so, sB, sC, sA, sst,
                         HAS_Z: tl.constexpr, SOFTPLUS: tl.constexpr, ACC: tl.constexpr,
                         BD: tl.constexpr, BT: tl.constexpr, NP: tl.constexpr):
        b = tl.program_id(0).to(tl.int64)
        d = tl.program_id(1) * BD + tl.arange(0, BD)  # (BD,) this program's channels
        dmask = d < n_ch
        ns = tl.arange(0, NP)
        nd = (ns < N)[:, None] & dmask[None, :]  # (NP, BD)
        pos = tl.arange(0, BT)
        pos3 = pos[:, None, None]
        bias = tl.load(bias_ptr + d, mask=dmask, other=0.0).to(ACC)  # absent D, bias come in as zeros
        Dd = tl.load(D_ptr + d, mask=dmask, other=0.0).to(ACC)
        # padded states get A = 0 and B = 0: a = 1, x = 0, so their h stays 0 and adds nothing to y
        A = tl.load(A_ptr + d[None, :] * sA[0] + ns[:, None] * sA[1], mask=nd, other=0.0).to(ACC)  # (NP, BD)
        A2 = A * 1.4426950408889634  # exp(dt A) as exp2(dt A log2 e): a multiply less, as mamba's CUDA kernel
        st = st_ptr + b * sst[0] + d[None, :] * sst[1] + ns[:, None]  # (NP, BD) at chunk 0
        h_in = tl.zeros((NP, BD), ACC)  # the state entering the chunk
        for c in range(tl.cdiv(L, BT)):
            t = c * BT + pos
            tok = t < L
            mask = tok[:, None] & dmask[None, :]  # (BT, BD)
            tn = tok[:, None] & (ns < N)[None, :]  # (BT, NP)
            u = _tile(u_ptr, su, b, d, t, mask, ACC)  # (BT, BD)
            dt = _dt(dt_ptr, sdt, b, d, t, mask, bias, SOFTPLUS, ACC)[0]
            Bt = _bc_tile(B_ptr, sB, b, ns, t, tn, ACC)  # (BT, NP)
            Ct = _bc_tile(C_ptr, sC, b, ns, t, tn, ACC)
            tl.store(st + c * sst[2], h_in, mask=nd)
            h = _chunk_states(dt, dt * u, h_in, A2, Bt, pos3)[2]  # (BT, NP, BD)
            y = tl.sum(h * Ct[:, :, None], 1) + Dd[None, :] * u  # (BT, BD)
            # padded steps have a = 1 and x = 0, so the last step's state is the state after step L - 1 too
            h_in = _at(h, pos3, BT - 1)
            if HAS_Z:
                zt = _tile(z_ptr, sz, b, d, t, mask, ACC)
                y *= zt * tl.sigmoid(zt)
            o = b * so[0] + d[None, :] * so[1] + t[:, None] * so[2]
            tl.store(out_ptr + o, y.to(out_ptr.dtype.element_ty), mask=mask)
        last = (b * n_ch + d[None, :]) * N + ns[:, None]  # (b, d, n) contiguous
        tl.store(last_ptr + last, h_in, mask=nd)

    @triton.jit(do_not_specialize=["L"])
    def _scan_bwd_kernel(u_ptr, dt_ptr, z_ptr, g_ptr, B_ptr, C_ptr, A_ptr, D_ptr, bias_ptr, st_ptr,
                         du_ptr, ddt_ptr, dz_ptr, dB_ptr, dC_ptr, dW_ptr,
                         L, N, n_ch, s_part, su, sdt, sz, sg, so, sB, sC, sA, sst,
                         HAS_Z: tl.constexpr, SOFTPLUS: tl.constexpr, DET: tl.constexpr, ACC: tl.constexpr,
                         BD: tl.constexpr, BT: tl.constexpr, NP: tl.constexpr):
        b = tl.program_id(0).to(tl.int64)
        d = tl.program_id(1) * BD + tl.arange(0, BD)
        dmask = d < n_ch
        ns = tl.arange(0, NP)
        nd = (ns < N)[:, None] & dmask[None, :]  # (NP, BD)
        pos = tl.arange(0, BT)
        pos3 = pos[:, None, None]
        bias = tl.load(bias_ptr + d, mask=dmask, other=0.0).to(ACC)
        Dd = tl.load(D_ptr + d, mask=dmask, other=0.0).to(ACC)
        A = tl.load(A_ptr + d[None, :] * sA[0] + ns[:, None] * sA[1], mask=nd, other=0.0).to(ACC)  # (NP, BD)
        A2 = A * 1.4426950408889634
        st = st_ptr + b * sst[0] + d[None, :] * sst[1] + ns[:, None]
        part = tl.program_id(1).to(tl.int64) * s_part if DET else 0  # DET: a dB/dC buffer per channel block
        dBC = part + (b * N + ns[None, :]) * L  # (1, NP): rows of dB, dC (b, n, l)
        dh_next = tl.zeros((NP, BD), ACC)  # a[t0] dh[t0] of the chunk to the right
        dA = tl.zeros((NP, BD), ACC)
        dD = tl.zeros((BD,), ACC)
        dbias = tl.zeros((BD,), ACC)
        n_chunks = tl.cdiv(L, BT)
        for i in range(n_chunks):
            c = n_chunks - 1 - i  # right to left
            t = c * BT + pos
            tok = t < L
            mask = tok[:, None] & dmask[None, :]  # (BT, BD)
            tn = tok[:, None] & (ns < N)[None, :]  # (BT, NP)
            u = _tile(u_ptr, su, b, d, t, mask, ACC)  # (BT, BD)
            dt, dsp = _dt(dt_ptr, sdt, b, d, t, mask, bias, SOFTPLUS, ACC)
            # dt[t+1] gives a[t+1] for the adjoint: reloaded (an L1 hit) rather than shifted in registers
            dt_next = _dt(dt_ptr, sdt, b, d, t + 1, (t + 1 < L)[:, None] & dmask[None, :], bias, SOFTPLUS,
                          ACC)[0]
            dtu = dt * u
            g = _tile(g_ptr, sg, b, d, t, mask, ACC)
            if HAS_Z:
                zt = _tile(z_ptr, sz, b, d, t, mask, ACC)
                sgz = tl.sigmoid(zt)
                ybar = g * zt * sgz  # dloss/dy: zero beyond L, so gh and dh are exactly zero there
            else:
                ybar = g
            Bt = _bc_tile(B_ptr, sB, b, ns, t, tn, ACC)  # (BT, NP)
            Ct = _bc_tile(C_ptr, sC, b, ns, t, tn, ACC)
            h0 = tl.load(st + c * sst[2], mask=nd, other=0.0)
            a, x, h = _chunk_states(dt, dtu, h0, A2, Bt, pos3)  # (BT, NP, BD), from the saved state
            # what needs h is taken now, so only h - x (= a[t] h[t-1]) stays live through the adjoint scan
            y = tl.sum(h * Ct[:, :, None], 1) + Dd[None, :] * u  # (BT, BD) recomputed, for dz
            dCt = tl.sum(h * ybar[:, None, :], 2)  # (BT, NP) sum over this block's channels
            hx = h - x
            a0 = _at(a, pos3, 0)  # (NP, BD)
            # dh[t] = gh[t] + a[t+1] dh[t+1], a reverse scan; the right neighbour's a dh enters at the last
            # step
            gh = ybar[:, None, :] * Ct[:, :, None] + tl.where(pos3 == BT - 1, dh_next[None, :, :], 0.0)
            a_next = tl.exp2(dt_next[:, None, :] * A2[None, :, :])
            dh = tl.associative_scan((a_next, gh), 0, _combine, reverse=True)[1]
            q = dh * hx  # dh[t] a[t] h[t-1]
            dA += tl.sum(dt[:, None, :] * q, 0)
            dh_next = a0 * _at(dh, pos3, 0)
            S1 = tl.sum(dh * Bt[:, :, None], 1)  # (BT, BD) sum_n dh B
            S2 = tl.sum(A[None, :, :] * q, 1)    # sum_n dh A (h - x)
            dBt = tl.sum(dh * dtu[:, None, :], 2)  # (BT, NP)
            # dB, dC sum over channels: atomics across channel blocks (DET: one writer each)
            tl.atomic_add(dB_ptr + dBC + t[:, None], dBt, mask=tn, sem="relaxed")
            tl.atomic_add(dC_ptr + dBC + t[:, None], dCt, mask=tn, sem="relaxed")
            o = b * so[0] + d[None, :] * so[1] + t[:, None] * so[2]
            ddt = tl.where(mask, (u * S1 + S2) * dsp, 0.0)
            dbias += tl.sum(ddt, 0)
            dD += tl.sum(ybar * u, 0)
            tl.store(ddt_ptr + o, ddt.to(ddt_ptr.dtype.element_ty), mask=mask)
            if HAS_Z:
                dz = g * y * sgz * (1.0 + zt * (1.0 - sgz))
                tl.store(dz_ptr + o, dz.to(dz_ptr.dtype.element_ty), mask=mask)
            du = dt * S1 + Dd[None, :] * ybar
            tl.store(du_ptr + o, du.to(du_ptr.dtype.element_ty), mask=mask)
        # per-(b, d) partials of dA | dD | dbias, (b, d, n + 2), summed over batch on the host: deterministic
        w = (b * n_ch + d) * (N + 2)
        tl.store(dW_ptr + w[None, :] + ns[:, None], dA, mask=nd)
        tl.store(dW_ptr + w + N, dD, mask=dmask)
        tl.store(dW_ptr + w + N + 1, dbias, mask=dmask)

# channel-contiguous? -> BT, (BD, warps) forward, (BD, warps) backward: picked by compiling ahead of time for
# sm_90 and counting registers, spills and the chunk loop's instructions per element (docs/scan.md §2, which
# also says what is not timed yet). BT 32: half the saved states of BT 16, for ~12% more backward
# instructions; the (BT, NP, BD) blocks hold 64 (forward) and 32 (backward) fp32 values per thread.
_TILES = {True: (32, (32, 8), (8, 4)), False: (32, (32, 8), (8, 4))}


def _like(u, dtype, chan):  # an output (b, d, l) in the layout of the inputs
    b, d, l = u.shape
    return u.new_empty(b, l, d, dtype=dtype).transpose(1, 2) if chan else u.new_empty(b, d, l, dtype=dtype)


def _block(tile, n):  # (BD, warps) of _TILES, d_state n -> BD, warps, NP
    BD, warps = tile
    NP = triton.next_power_of_2(n)
    # past 16 states BD shrinks, so the (BT, NP, BD) block keeps the register size the tiles were picked at
    return max(1, BD * 16 // max(NP, 16)), warps, NP


def _triton_forward(u, delta, A, B, C, D, z, bias, st, softplus, chan):
    (b, nd, l), n = u.shape, A.shape[1]
    BT = _TILES[chan][0]
    BD, warps, NP = _block(_TILES[chan][1], n)
    out = _like(u, u.dtype, chan)
    last = st.new_empty(b, nd, n)
    z_or_u = u if z is None else z  # absent z: any valid pointer, never read
    _scan_fwd_kernel[(b, triton.cdiv(nd, BD))](
        u, delta, z_or_u, B, C, A, D, bias, st, out, last, l, n, nd, u.stride(), delta.stride(),
        z_or_u.stride(), out.stride(), B.stride(), C.stride(), A.stride(), st.stride()[:3],
        HAS_Z=z is not None, SOFTPLUS=softplus, ACC=tl.float64 if st.dtype == torch.float64 else tl.float32,
        BD=BD, BT=BT, NP=NP, num_warps=warps,
        enable_fp_fusion=True)  # fusion pinned: Triton 3.10 flips the default
    return out, last


def _triton_backward(u, delta, A, B, C, D, z, bias, st, g, softplus, det, chan):
    # -> the grads of u, delta, A, B, C, D, z, bias
    (b, nd, l), n = u.shape, A.shape[1]
    BT = _TILES[chan][0]
    BD, warps, NP = _block(_TILES[chan][2], n)
    du = _like(u, u.dtype, chan)
    ddelta = _like(u, delta.dtype, chan)
    dz = _like(u, u.dtype if z is None else z.dtype, chan)
    # dB, dC in fp32 (fp64): one buffer for the atomics, or (det) one per channel block, summed below
    dBC = u.new_zeros(2, triton.cdiv(nd, BD) if det else 1, b, n, l, dtype=st.dtype)
    dW = st.new_empty(b, nd, n + 2)
    z_or_u = u if z is None else z
    _scan_bwd_kernel[(b, triton.cdiv(nd, BD))](
        u, delta, z_or_u, g, B, C, A, D, bias, st, du, ddelta, dz, dBC[0], dBC[1], dW, l, n, nd, b * n * l,
        u.stride(), delta.stride(), z_or_u.stride(), g.stride(), du.stride(), B.stride(), C.stride(),
        A.stride(), st.stride()[:3],
        HAS_Z=z is not None, SOFTPLUS=softplus, DET=det,
        ACC=tl.float64 if st.dtype == torch.float64 else tl.float32,
        BD=BD, BT=BT, NP=NP, num_warps=warps, enable_fp_fusion=True)
    dB, dC = dBC.sum(1)
    dW = dW.sum(0)  # dA | dD | dbias
    return (du, ddelta, dW[:, :n].to(A.dtype), dB.to(B.dtype), dC.to(C.dtype), dW[:, n].to(D.dtype),
            None if z is None else dz, dW[:, n + 1].to(bias.dtype))


class _ScanTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, bias, softplus, det):
        # a transposed (b, l, d) Linear output, as in model.py
        chan = delta.stride(1) == 1 and delta.stride(2) != 1
        b, nd, l = u.shape
        acc = torch.promote_types(torch.float32, u.dtype)
        # states at chunk starts
        st = u.new_empty(b, nd, triton.cdiv(l, _TILES[chan][0]), A.shape[1], dtype=acc)
        ctx.save_for_backward(u, delta, A, B, C, D, z, bias, st)
        ctx.cfg = softplus, det, chan
        out, last = _triton_forward(u, delta, A, B, C, D, z, bias, st, softplus, chan)
        ctx.mark_non_differentiable(last)
        return out, last

    @staticmethod
    def backward(ctx, g, _glast):
        softplus, det, chan = ctx.cfg
        grads = _triton_backward(*ctx.saved_tensors, g, softplus, det, chan)
        return *grads, None, None


def selective_scan_triton(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
                          D: Optional[Tensor] = None, z: Optional[Tensor] = None,
                          delta_bias: Optional[Tensor] = None, delta_softplus: bool = False,
                          return_last_state: bool = False, deterministic: bool = False) -> ScanOut:
    """The Triton backend: CUDA tensors, or CPU tensors with TRITON_INTERPRET=1 set before import."""
    if not HAS_TRITON or (u.device.type != "cuda" and not INTERPRET):
        raise RuntimeError("the triton backend needs triton, and CUDA tensors or TRITON_INTERPRET=1 set "
                           "before ssm_scan is imported (CPU tensors run in the interpreter)")

    def vector(x):  # D, bias (d,) with stride 1; absent ones as zeros (they get grads, which are dropped)
        return u.new_zeros(u.shape[1], dtype=A.dtype) if x is None else x.contiguous()
    out, last = _ScanTriton.apply(u, delta, A, B, C, vector(D), z, vector(delta_bias), bool(delta_softplus),
                                  deterministic)
    return (out, last) if return_last_state else out

# -----------------------------------------------------------------------------
# dispatch

BACKENDS = ("auto", "torch", "cpu", "triton")


def selective_scan(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor] = None,
                   z: Optional[Tensor] = None, delta_bias: Optional[Tensor] = None,
                   delta_softplus: bool = False, *, backend: str = "auto", deterministic: bool = False,
                   return_last_state: bool = False) -> ScanOut:
    """See the module docstring. `deterministic` matters for triton only (fixed-order dB/dC sums); the torch
    and cpu backends always sum in a fixed order. "auto" probes its kernel once per device type and dtype
    (forward and backward on a tiny input) and then commits to it: a kernel that cannot run here is never
    half-used, and a later failure is a real error, not a silent switch."""
    if torch.compiler.is_compiling() and resolve_backend(backend, u.device) == "torch":
        # the op's backward reruns the forward under autograd, which plain torch ops don't record in an op
        raise RuntimeError("selective_scan: torch.compile needs the cpu or triton backend (the torch "
                           "backend's backward cannot run inside the compiled op); use backend='auto'")
    if torch.compiler.is_compiling():  # one opaque op for dynamo (the checks ran when the op was traced)
        out, last = scan_op(u, delta, A, B, C, D, z, delta_bias, bool(delta_softplus), backend,
                            bool(deterministic))
        return (out, last) if return_last_state else out
    check_inputs(u, delta, A, B, C, D, z, delta_bias)
    return dispatch(u, delta, A, B, C, D, z, delta_bias, delta_softplus, backend, deterministic,
                    return_last_state)


def dispatch(u, delta, A, B, C, D, z, delta_bias, delta_softplus, backend, deterministic, return_last_state):
    """selective_scan on checked inputs, by the backend `backend` resolves to (the compiled op calls it)"""
    args = (u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    chosen = resolve_backend(backend, u.device)
    # (SSM_SCAN_BACKEND picks the kernel "auto" probes: how the tests stand in for a CUDA machine)
    if backend == "auto" and chosen != "torch":
        kernel = selective_scan_cpu if chosen == "cpu" else selective_scan_triton
        if not probe(chosen, kernel, u.device, u.dtype):
            chosen = "torch"
    if chosen == "torch":
        return selective_scan_torch(*args)
    if chosen == "cpu":
        return selective_scan_cpu(*args)
    return selective_scan_triton(*args, deterministic=deterministic)


def resolve_backend(backend: str, device: torch.device) -> str:
    """What "auto" means on `device`: the kernel of the device (cpu or triton), unless it already failed in
    this process. CPU tensors take cpu even under TRITON_INTERPRET=1 (set for every test): ask for triton."""
    if backend == "auto":
        backend = os.environ.get("SSM_SCAN_BACKEND", "auto")
    if backend not in BACKENDS:
        raise ValueError(f"selective_scan backend must be one of {BACKENDS}, got {backend!r}")
    if backend != "auto":
        return backend
    kernels = dict(cuda="triton", cpu="cpu")  # the fused kernel of each device type
    kernel = kernels.get(device.type)
    if kernel is None or kernel in fallbacks() or (kernel == "triton" and not HAS_TRITON):
        return "torch"
    return kernel


if __name__ == "__main__":  # `python ssm_scan.py`: bench.py's check of every kernel, then its timing table
    bench_py = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bench.py")
    os.execv(sys.executable, [sys.executable, bench_py, "--sections=check,scan", *sys.argv[1:]])
