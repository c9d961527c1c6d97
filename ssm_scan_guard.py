"""
What guards ssm_scan.selective_scan, beside the math in ssm_scan.py:
    input checks  what no backend can compute gets a ValueError naming the argument, not a wrong answer
    the probe     "auto" runs its kernel once, forward and backward, on a tiny input per device type and
                  dtype, then commits to it; a kernel that cannot run here is never half-used (the torch
                  backend instead, with one line on stderr, and fallbacks() for train.py's log)
    compile       the scan as one opaque custom op, `icl_hybrids::selective_scan`, so dynamo never traces
                  into the ctypes and Triton launches (Inductor failed on the Triton launch's stride tuples)
example_inputs is the one seeded input maker of the probe, bench.py and the tests.
"""
import sys
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

import torch

Tensor = torch.Tensor

# -----------------------------------------------------------------------------
# input checks

def _shape(t):
    return tuple(t.shape)


def check_inputs(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor] = None,
                 z: Optional[Tensor] = None, delta_bias: Optional[Tensor] = None) -> None:
    """raise ValueError for an argument of the wrong rank, shape, dtype or device."""
    def fail(name, t, expected):
        raise ValueError(f"selective_scan: {name} has shape {_shape(t)} and dtype {t.dtype}; "
                         f"expected {expected}")
    floats = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
    if not isinstance(u, torch.Tensor) or u.dim() != 3 or u.dtype not in floats:
        raise ValueError(f"selective_scan: u must be a real floating (b, d, l) tensor, got "
                         f"{_shape(u) if isinstance(u, torch.Tensor) else type(u).__name__}")
    b, d, l = u.shape
    args = dict(delta=delta, A=A, B=B, C=C, D=D, z=z, delta_bias=delta_bias)
    for name, t in args.items():
        if t is None:
            if name in ("delta", "A", "B", "C"):
                raise ValueError(f"selective_scan: {name} is required")
            continue
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"selective_scan: {name} must be a tensor, got {type(t).__name__}")
        if t.dtype not in floats:
            what = "complex A is not supported (real A only)" if t.is_complex() else "a real floating dtype"
            fail(name, t, what)
        if t.device != u.device:
            raise ValueError(f"selective_scan: {name} is on {t.device} but u is on {u.device}")
    n = A.shape[1] if A.dim() == 2 else None
    if A.dim() != 2 or A.shape[0] != d:
        fail("A", A, f"(d, n) with d = {d}")
    for name in ("delta", "z"):
        if args[name] is not None and _shape(args[name]) != (b, d, l):
            fail(name, args[name], f"(b, d, l) = {(b, d, l)}, like u")
    for name in ("B", "C"):
        if _shape(args[name]) != (b, n, l):
            fail(name, args[name], f"(b, n, l) = {(b, n, l)} (variable, one group: grouped (b, g, n, l) "
                                   "and constant (d, n) B/C are not supported)")
    for name in ("D", "delta_bias"):
        if args[name] is not None and _shape(args[name]) != (d,):
            fail(name, args[name], f"(d,) = ({d},)")


def example_inputs(b: int, d: int, l: int, n: int, dtype: torch.dtype = torch.float32, device: Any = "cpu",
                   seed: int = 0) -> Tuple[Dict[str, Tensor], Tensor]:
    """seeded inputs in model.py's layout, leaves that require grad, and a gradient g for out: u, delta, z are
    transposed (b, l, d) activations, B and C slices of one (b, l, 2n) tensor. The global RNG is not touched.
    What the probe, bench.py and the tests run the kernels on."""
    gen = torch.Generator().manual_seed(seed)

    def r(*s):
        return torch.randn(*s, generator=gen).to(device)

    def act():  # (b, l, d) -> (b, d, l) view
        return r(b, l, d).to(dtype).transpose(1, 2)
    BC = r(b, l, 2 * n).to(dtype).transpose(1, 2)  # (b, 2n, l)
    # A, D, delta_bias stay fp32, as model.py's parameters under autocast
    x = dict(u=act(), delta=act() / 2 - 2, A=-r(d, n).exp(), B=BC[:, :n], C=BC[:, n:], D=r(d), z=act(),
             delta_bias=r(d) / 2)
    return {k: v.detach().requires_grad_() for k, v in x.items()}, r(b, d, l).to(dtype)

# -----------------------------------------------------------------------------
# the probe

_fallback_reason: Dict[str, str] = {}  # kernel -> why "auto" no longer tries it in this process
# (kernel, device type, dtype) that ran forward and backward once: "auto" commits to it
_probed: Set[Tuple[str, str, torch.dtype]] = set()


def probe(kernel: str, fn: Callable, device: torch.device, dtype: torch.dtype) -> bool:
    """whether `fn`, the backend `kernel`, runs here: forward and backward on a tiny input in model.py's
    layout, once per device type and dtype. False, and one line on stderr, if it cannot be built, compiled or
    launched (then "auto" skips it for the rest of the process). Deterministic inputs: the RNG is not
    touched."""
    if (kernel, device.type, dtype) in _probed:
        return True
    x, _ = example_inputs(2, 4, 5, 2, dtype, device)
    try:
        # (the first call may come from inside the compiled custom op, where plain torch ops record no graph:
        # out comes straight from the kernel's autograd.Function, and its grad is given, not summed)
        with torch.enable_grad():
            out = fn(**x, delta_softplus=True)
            torch.autograd.grad(out, list(x.values()), torch.ones_like(out))
    except Exception as e:  # noqa: BLE001 -- a build, compile or launch failure of any kind
        if isinstance(e, torch.OutOfMemoryError):
            raise
        reason = " ".join(f"{type(e).__name__}: {e}".split())[:300]
        _fallback_reason[kernel] = reason
        print(f"ssm_scan: the {kernel} scan failed ({reason}); using the torch backend instead",
              file=sys.stderr)
        return False
    _probed.add((kernel, device.type, dtype))
    return True


def fallbacks() -> Dict[str, str]:
    """{kernel: why} for every kernel that "auto" gave up on in this process (train.py logs them)"""
    return dict(_fallback_reason)

# -----------------------------------------------------------------------------
# torch.compile: one opaque custom op. ssm_scan.selective_scan calls scan_op while compiling; eager calls
# never go through it, so eager bits are unchanged. Its backward recomputes the forward under autograd (a
# compiled graph cannot hold the kernels' saved chunk states), so a compiled Mamba step does one more scan
# forward.

def _eager_scan(inputs, softplus, backend, deterministic):
    import ssm_scan  # (at call time: ssm_scan imports this module)
    u, delta, A, B, C, D, z, delta_bias = inputs
    return ssm_scan.dispatch(u, delta, A, B, C, D, z, delta_bias, softplus, backend, deterministic, True)


@torch.library.custom_op("icl_hybrids::selective_scan", mutates_args=())
def scan_op(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
            D: Optional[torch.Tensor], z: Optional[torch.Tensor], delta_bias: Optional[torch.Tensor],
            softplus: bool, backend: str, deterministic: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        out, last = _eager_scan([u, delta, A, B, C, D, z, delta_bias], softplus, backend, deterministic)
    return out.contiguous(), last.contiguous()  # the layout the fake implementation promises


@scan_op.register_fake
def _scan_op_fake(u, delta, A, B, C, D, z, delta_bias, softplus, backend, deterministic):
    b, d, _ = u.shape
    state = torch.promote_types(torch.float32, u.dtype)
    out = torch.empty_like(u, memory_format=torch.contiguous_format)
    return out, u.new_empty(b, d, A.shape[1], dtype=state)


@torch.library.custom_op("icl_hybrids::selective_scan_backward", mutates_args=())
def _scan_backward_op(g: torch.Tensor, u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                      C: torch.Tensor, D: Optional[torch.Tensor], z: Optional[torch.Tensor],
                      delta_bias: Optional[torch.Tensor], softplus: bool, backend: str,
                      deterministic: bool) -> List[torch.Tensor]:
    inputs = [u, delta, A, B, C, D, z, delta_bias]
    with torch.enable_grad():
        x = [None if t is None else t.detach().requires_grad_() for t in inputs]
        out, _ = _eager_scan(x, softplus, backend, deterministic)
        wanted = [t for t in x if t is not None]
        grads = iter(torch.autograd.grad(out, wanted, g))
    # absent D, z, bias: empty tensors (a custom op returns tensors only)
    # (clones: autograd may hand back g itself or a view of it, and an op's outputs must not alias its inputs)
    return [next(grads).clone(memory_format=torch.contiguous_format) if t is not None else u.new_empty(0)
            for t in x]


@_scan_backward_op.register_fake
def _scan_backward_op_fake(g, u, delta, A, B, C, D, z, delta_bias, softplus, backend, deterministic):
    inputs = [u, delta, A, B, C, D, z, delta_bias]
    return [u.new_empty(0) if t is None else torch.empty_like(t, memory_format=torch.contiguous_format)
            for t in inputs]


def _scan_op_setup(ctx, inputs, output):
    ctx.save_for_backward(*[t if t is not None else torch.empty(0) for t in inputs[:8]])
    ctx.present = [t is not None for t in inputs[:8]]
    ctx.options = inputs[8:]


def _scan_op_backward(ctx, g, _glast):
    saved = [t if present else None for t, present in zip(ctx.saved_tensors, ctx.present)]
    grads = _scan_backward_op(g, *saved, *ctx.options)
    return *[gr if present else None for gr, present in zip(grads, ctx.present)], None, None, None


scan_op.register_autograd(_scan_op_backward, setup_context=_scan_op_setup)
