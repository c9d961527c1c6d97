"""
The selective scan under torch.compile: one opaque custom op, `icl_hybrids::selective_scan`, with a fake
implementation (shapes only) and its autograd, so dynamo never traces into the ctypes and Triton launches
(Inductor failed on the Triton launch's stride tuples). ssm_scan.selective_scan calls `scan_op` while
compiling; eager calls never go through it, so eager bits are unchanged. Its backward recomputes the forward
under autograd (a compiled graph cannot hold the kernels' saved chunk states), so a compiled Mamba step does
one more scan forward than an eager one.
"""
from typing import List, Optional, Tuple

import torch


def _eager_scan(u, delta, A, B, C, D, z, delta_bias, softplus, backend, deterministic):
    import ssm_scan  # (at call time: ssm_scan imports this module)
    return ssm_scan.dispatch(u, delta, A, B, C, D, z, delta_bias, softplus, backend, deterministic, True)


@torch.library.custom_op("icl_hybrids::selective_scan", mutates_args=())
def scan_op(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
            D: Optional[torch.Tensor], z: Optional[torch.Tensor], delta_bias: Optional[torch.Tensor],
            softplus: bool, backend: str, deterministic: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        out, last = _eager_scan(u, delta, A, B, C, D, z, delta_bias, softplus, backend, deterministic)
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
        out, _ = _eager_scan(*x, softplus, backend, deterministic)
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
