"""Chunked fused-linear distillation loss in eager PyTorch: the CPU path and the twin of
``specdistill.kernels.fused_linear_distill_loss``.

For hidden states ``h`` [N, H] and LM head ``W`` [V, H], the loss equals
``distill_loss(h @ W.T, teacher_logits, ...)``; with ``g = dloss/ds`` per chunk
(autograd through the reference on that chunk only)

    dloss/dh = g W,        dloss/dW = g^T h.

Rows go ``chunk_size`` at a time and the gradients are computed during the
forward, so only one chunk of logits and its autograd intermediates exist at
once: the memory win holds on CPU as well. With ``reduction="none"`` the
backward recomputes each chunk with the per-row upstream gradient instead. The
teacher (logits, or hidden states + head computed per chunk) gets no gradient;
the head has no bias; ``dloss/dW`` is accumulated in W's dtype.
"""

from __future__ import annotations

import torch

from specdistill.kernels.linear_grad import ChunkedLinearLoss
from specdistill.kernels.loss_args import LossOptions, default_chunk_rows, linear_logits_shapes
from specdistill.losses.reference import distill_loss, expected_acceptance

# About 32 MiB of fp32 logits per chunk (170 rows at V = 49152); the reference's autograd keeps
# several such buffers. Small chunks also stay warm in cache: on a 2-core CPU this path measured
# faster than the materialized one (page faults on the [N, V] buffers dominate there).
CHUNK_ELEMENTS = 1 << 23


def _chunk(s, t, labels, mask, opts, scale, want_acc):
    """Per-row loss (and acceptance) of one chunk; with ``scale`` also dloss/ds for sum(scale * loss)."""
    acc = None
    if want_acc:
        acc = torch.where(mask, expected_acceptance(s, t, opts["temperature"]), 0.0)
    if scale is None:
        with torch.no_grad():
            return distill_loss(s, t, labels=labels, reduction="none", **opts), acc, None
    with torch.enable_grad():
        s = s.detach().requires_grad_()
        per_row = distill_loss(s, t, labels=labels, reduction="none", **opts)
        (grad,) = torch.autograd.grad(per_row, s, grad_outputs=scale.to(per_row.dtype))
    return per_row.detach(), acc, grad


def _chunk_loop(h, w, teacher, labels, mask, opts, chunk, scale, need_h, need_w, want_acc):
    n = h.shape[0]
    losses, accs = [], []
    grad_h = torch.empty_like(h) if scale is not None and need_h else None
    grad_w = torch.zeros_like(w) if scale is not None and need_w else None
    for start in range(0, n, chunk):
        rows = slice(start, min(start + chunk, n))
        s = h[rows] @ w.t()  # [C, V]
        t = teacher[0][rows] if len(teacher) == 1 else teacher[0][rows] @ teacher[1].t()  # [C, V]
        lab = None if labels is None else labels[rows]
        loss, acc, g = _chunk(s, t, lab, mask[rows], opts, None if scale is None else scale[rows], want_acc)
        losses.append(loss)
        accs.append(acc)
        if g is None:
            continue
        g = g.to(h.dtype)
        if grad_h is not None:
            torch.mm(g, w, out=grad_h[rows])
        if grad_w is not None:
            grad_w.addmm_(g.t(), h[rows])
    acc = torch.cat(accs) if want_acc and n else torch.zeros(n, device=h.device)
    loss = torch.cat(losses) if n else torch.zeros(n, device=h.device)
    return loss, acc, grad_h, grad_w


def chunked_linear_distill_loss(
    student_hidden: torch.Tensor,  # [..., H]
    student_weight: torch.Tensor,  # [V, H] the draft's LM head
    teacher_logits: torch.Tensor | None = None,  # [..., V]
    *,
    teacher_hidden: torch.Tensor | None = None,  # [..., H_t]
    teacher_weight: torch.Tensor | None = None,  # [V, H_t]
    chunk_size: int | None = None,
    return_acceptance: bool = False,
    **options,
):
    """``distill_loss(student_hidden @ student_weight.T, teacher, ...)`` chunk by chunk (see module doc).

    With ``return_acceptance=True`` also returns the per-position ``sum min(p, q)``
    (0 at masked positions)."""
    s_shape, t_shape = linear_logits_shapes(
        student_hidden, student_weight, teacher_logits, teacher_hidden, teacher_weight
    )
    if student_weight.dtype != student_hidden.dtype:
        raise TypeError(
            f"hidden states ({student_hidden.dtype}) and head ({student_weight.dtype}) differ in dtype"
        )
    o = LossOptions(**options)
    o.check(s_shape, t_shape)
    vocab, width = student_weight.shape
    h = student_hidden.reshape(-1, width)
    if teacher_logits is not None:
        teacher = (teacher_logits.detach().reshape(-1, vocab),)
    else:
        teacher = (teacher_hidden.detach().reshape(-1, teacher_weight.shape[1]), teacher_weight.detach())
    flat, mask = o.flat_labels(h.shape[0], h.device)
    # What each chunk's eager loss takes: the options but the labels and reduction, which the loop sets.
    opts = dict(divergence=o.divergence, temperature=o.temperature, beta=o.beta, alpha=o.alpha,
                ignore_index=o.ignore_index)
    chunk = chunk_size or default_chunk_rows(h.shape[0], vocab, CHUNK_ELEMENTS)
    def loop(h, w, teacher, labels, mask, scale, need_h, need_w, want_acc):
        return _chunk_loop(h, w, teacher, labels, mask, opts, chunk, scale, need_h, need_w, want_acc)

    loss, acc = ChunkedLinearLoss.apply(
        h, student_weight, teacher, flat, mask, loop, o.reduction, s_shape[:-1], torch.is_grad_enabled(),
        return_acceptance,
    )
    return (loss, acc) if return_acceptance else loss
