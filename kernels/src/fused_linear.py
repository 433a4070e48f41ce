"""Fused-linear distillation loss: LM head + softmax(T) + divergence, chunk by chunk.

For the draft's final hidden states ``h`` [N, H] and LM head ``W`` [V, H]
(student logits ``s = h W^T``), the loss is ``fused_distill_loss(s, t)``, and
with ``g = dloss/ds`` (from the fused kernel)

    dloss/dh = g W,        dloss/dW = g^T h.

Rows are processed ``chunk_size`` at a time: the chunk's logits are computed
(cuBLAS, fp32 output on CUDA), the forward kernel gives loss, acceptance and row statistics, the
backward kernel overwrites the chunk's logits with ``g`` in place, and the two
products above are accumulated, so the full [N, V] student logits never exist
and the gradients are ready when the forward returns (the backward only scales
them by the upstream gradient). With ``reduction="none"`` the upstream gradient
differs per row, so the forward keeps only the loss and the backward recomputes
each chunk. The teacher is ``teacher_logits`` [N, V] or ``teacher_hidden`` [N,
H_t] with its head [V, H_t] (then computed per chunk as well); it gets no
gradient. The head has no bias. ``dloss/dW`` is accumulated in W's dtype across
chunks (as Liger-Kernel does), so in bf16 it carries one rounding per chunk.
"""

from __future__ import annotations

import torch
from specdistill.kernels.fused_divergence import check_device, launch_backward, launch_forward, make_config
from specdistill.kernels.linear_grad import ChunkedLinearLoss
from specdistill.kernels.loss_args import (
    KERNEL_DTYPES,
    LossOptions,
    check_ce_labels,
    default_chunk_rows,
    linear_logits_shapes,
)

# One chunk of logits holds about this many numbers (128 MiB in bf16): enough rows to
# fill a GPU with one program per row, a small fraction of [N, V] at training sizes.
CHUNK_ELEMENTS = 1 << 26


def _project(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:  # [C, H] x [V, H] -> [C, V]
    """Logits in fp32 straight from the bf16/fp16 GEMM (fp32 accumulation, no bf16 rounding of
    the logits: the divergence's gradient is a difference of nearly equal probabilities), where
    cuBLAS offers it; elsewhere in the input dtype (the kernels read either)."""
    if x.is_cuda and x.dtype in (torch.bfloat16, torch.float16) and w.dtype == x.dtype:
        try:
            return torch.mm(x, w.t(), out_dtype=torch.float32)
        except (TypeError, RuntimeError):  # torch < 2.8 or a GPU without the fp32-output GEMM
            pass
    return x @ w.t()


def _chunk_loop(h, w, teacher, labels, cfg, chunk, scale, need_h, need_w):
    """Loss and acceptance per row; with ``scale`` [N] also the scaled gradients for h and W."""
    n = h.shape[0]
    loss = torch.empty(n, dtype=torch.float32, device=h.device)
    acc = torch.empty_like(loss)
    grad_h = torch.empty_like(h) if scale is not None and need_h else None
    grad_w = torch.zeros_like(w) if scale is not None and need_w else None
    for start in range(0, n, chunk):
        rows = slice(start, min(start + chunk, n))
        s = _project(h[rows], w)  # [C, V]
        t = teacher[0][rows] if len(teacher) == 1 else _project(teacher[0][rows], teacher[1])  # [C, V]
        lab = None if labels is None else labels[rows]
        loss[rows], acc[rows], stats = launch_forward(s, t, lab, cfg)
        if scale is None:
            continue
        g = launch_backward(s, t, lab, stats, scale[rows], cfg, out=s).to(h.dtype)  # in place: s is ours
        if grad_h is not None:
            torch.mm(g, w, out=grad_h[rows])
        if grad_w is not None:
            grad_w.addmm_(g.t(), h[rows])
    return loss, acc, grad_h, grad_w


def fused_linear_distill_loss(
    student_hidden: torch.Tensor,  # [..., H]
    student_weight: torch.Tensor,  # [V, H] the draft's LM head
    teacher_logits: torch.Tensor | None = None,  # [..., V]
    *,
    teacher_hidden: torch.Tensor | None = None,  # [..., H_t]
    teacher_weight: torch.Tensor | None = None,  # [V, H_t]
    chunk_size: int | None = None,
    return_acceptance: bool = False,
    block_size: int | None = None,
    **options,
):
    """``fused_distill_loss(student_hidden @ student_weight.T, teacher, ...)`` without the [N, V]
    student logits (see the module doc); same keyword arguments and result."""
    s_shape, t_shape = linear_logits_shapes(
        student_hidden, student_weight, teacher_logits, teacher_hidden, teacher_weight
    )
    opts = LossOptions(**options)
    opts.check(s_shape, t_shape)
    if student_weight.dtype != student_hidden.dtype or student_hidden.dtype not in KERNEL_DTYPES:
        raise TypeError(
            f"hidden states ({student_hidden.dtype}) and head ({student_weight.dtype}) must share one of "
            "fp32, bf16, fp16"
        )
    check_device(student_hidden, student_weight, teacher_logits, teacher_hidden, teacher_weight, opts.labels)
    vocab, width = student_weight.shape
    h = student_hidden.reshape(-1, width).contiguous()
    if teacher_logits is not None:
        teacher = (teacher_logits.detach().reshape(-1, vocab).contiguous(),)
    else:
        teacher = (teacher_hidden.detach().reshape(-1, teacher_weight.shape[1]), teacher_weight.detach())
    flat, mask = opts.flat_labels(h.shape[0], h.device)
    check_ce_labels(flat, mask, vocab, opts.alpha)
    cfg = make_config(opts, flat is not None, vocab, block_size)
    chunk = chunk_size or default_chunk_rows(h.shape[0], vocab, CHUNK_ELEMENTS)
    def loop(h, w, teacher, labels, mask, scale, need_h, need_w, want_acc):
        return _chunk_loop(h, w, teacher, labels, cfg, chunk, scale, need_h, need_w)  # acceptance comes free

    loss, acc = ChunkedLinearLoss.apply(
        h, student_weight, teacher, flat, mask, loop, opts.reduction, s_shape[:-1], torch.is_grad_enabled(), True
    )
    return (loss, acc) if return_acceptance else loss
