"""The autograd shell of the chunked fused-linear loss, shared by the Triton path
(``fused_linear``) and its eager twin (``specdistill.losses.chunked``): they differ
only in how one chunk's loss and dloss/ds are computed, which the ``loop`` they pass
in does. Plain PyTorch, so the eager path needs no Triton.

With a reduced loss the gradients for h and W are computed during the forward (for
an upstream gradient of 1) and only scaled in the backward; with ``reduction="none"``
the upstream gradient differs per row, so the backward runs the loop again.
"""

from __future__ import annotations

import torch
from specdistill.kernels.loss_args import reduce_rows, row_scale


class ChunkedLinearLoss(torch.autograd.Function):
    """Gradients for the hidden states and the head weight; none for the teacher.

    ``loop(h, w, teacher, labels, mask, scale, need_h, need_w, want_acc)`` returns the
    per-row loss and acceptance and, with ``scale`` [N], the gradients of
    ``sum(scale * loss)`` for h and W (None where not needed)."""

    @staticmethod
    def forward(ctx, h, w, teacher, labels, mask, loop, reduction, shape, grad_enabled, want_acc):
        need_h, need_w = ctx.needs_input_grad[0] and grad_enabled, ctx.needs_input_grad[1] and grad_enabled
        eager_grads = (need_h or need_w) and reduction != "none"
        # fp32 row weights, or fp64 so that float64 inputs stay exact (tests, gradcheck).
        dtype = torch.float64 if h.dtype == torch.float64 else torch.float32
        ones = torch.ones((), dtype=dtype, device=h.device)
        scale = row_scale(ones, mask, reduction, dtype) if eager_grads else None
        loss_rows, acc, grad_h, grad_w = loop(h, w, teacher, labels, mask, scale, need_h, need_w, want_acc)
        ctx.loop, ctx.reduction = loop, reduction
        if eager_grads:
            ctx.grads = (grad_h, grad_w)
        elif grad_enabled:
            ctx.teacher = teacher  # detached, so keeping it on ctx creates no autograd cycle
            ctx.save_for_backward(h, w, labels, mask)
        acc = acc.reshape(shape)
        ctx.mark_non_differentiable(acc)
        return reduce_rows(loss_rows, mask, reduction, shape), acc

    @staticmethod
    def backward(ctx, grad_loss, _grad_acc):
        if ctx.reduction != "none":
            # The forward already computed the gradients for an upstream gradient of 1.
            grad_h, grad_w = ctx.grads
            del ctx.grads  # scaled in place below, so a second backward must not reuse them
            grad_h = None if grad_h is None else grad_h.mul_(grad_loss)
            grad_w = None if grad_w is None else grad_w.mul_(grad_loss)
        else:
            h, w, labels, mask = ctx.saved_tensors
            scale = row_scale(grad_loss, mask, "none", grad_loss.dtype)
            need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
            _, _, grad_h, grad_w = ctx.loop(h, w, ctx.teacher, labels, mask, scale, need_h, need_w, False)
        return grad_h, grad_w, None, None, None, None, None, None, None, None
