"""The one place that chooses between the Triton kernels and the eager PyTorch twins.

``impl="auto"`` runs Triton for CUDA tensors when the kernels cover the call
and the eager path otherwise (CPU, float64, a teacher that wants a gradient,
no triton installed), logging the reason once; there, forward KL without a
hard-label term takes ``forward_kl.py`` (one autograd node, in cache-sized blocks)
and the rest the reference. ``impl="torch"`` always runs the reference;
``impl="triton"`` always runs the kernels and raises if they do not cover the
call (on CPU tensors that needs ``TRITON_INTERPRET=1`` set before the kernels
are first used). All three entry points take the arguments of
``distill_loss`` and return the same value, plus the per-position acceptance
``sum min(p, q)`` (0 at masked positions, no gradient) with
``return_acceptance=True``.
"""

from __future__ import annotations

import logging

import torch

from specdistill.kernels import triton_available
from specdistill.kernels.loss_args import KERNEL_DTYPES, SPARSE_MAX_K, LossOptions, kernel_divergence, reduce_rows
from specdistill.losses.chunked import chunked_linear_distill_loss
from specdistill.losses.forward_kl import forward_kl_rows
from specdistill.losses.reference import distill_loss, expected_acceptance
from specdistill.losses.sparse import sparse_distill_loss, sparse_expected_acceptance

logger = logging.getLogger(__name__)
IMPLS = ("auto", "triton", "torch")
_logged: set[str] = set()


def _triton_gap(student: torch.Tensor, others: tuple, auto: bool) -> str | None:
    """Why the kernels cannot take this call, or None when they can."""
    if not triton_available():
        return "triton is not installed"
    if auto and student.device.type != "cuda":
        return f"tensors are on {student.device.type}, not CUDA"
    for x in (student, *others):
        if x is None:
            continue
        if x.is_floating_point() and x.dtype not in KERNEL_DTYPES:
            return f"{x.dtype} inputs (the kernels take fp32, bf16 and fp16)"
        if x.device != student.device:
            return f"inputs on different devices ({student.device} and {x.device})"
    teacher = others[0] if others else None
    if teacher is not None and teacher.requires_grad:
        return "the teacher requires a gradient, which the kernels do not compute"
    return None


def _use_triton(impl: str, student: torch.Tensor, others: tuple, gap: str | None = None) -> bool:
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if impl == "torch":
        return False
    gap = gap or _triton_gap(student, others, auto=impl == "auto")
    if gap is None:
        return True
    if impl == "triton":
        raise ValueError(f"impl='triton' cannot run this call: {gap}; use impl='auto' or 'torch'")
    if gap not in _logged:
        _logged.add(gap)
        logger.info("distillation loss runs the eager PyTorch path: %s", gap)
    return False


def _with_acceptance(loss, acc, o: LossOptions, return_acceptance: bool):
    if not return_acceptance:
        return loss
    if o.labels is not None:
        acc = torch.where(o.labels != o.ignore_index, acc, torch.zeros_like(acc))
    return loss, acc


def compute_distill_loss(
    student_logits: torch.Tensor,  # [..., V]
    teacher_logits: torch.Tensor,  # [..., V]
    *,
    impl: str = "auto",
    return_acceptance: bool = False,
    **options,
):
    """``distill_loss`` through the fused kernel or the eager reference (see module doc); ``options``
    are ``LossOptions``."""
    o = LossOptions(**options)
    o.check(student_logits.shape, teacher_logits.shape)
    if _use_triton(impl, student_logits, (teacher_logits,)):
        from specdistill.kernels import fused_distill_loss

        return fused_distill_loss(student_logits, teacher_logits, return_acceptance=return_acceptance, **options)
    if impl == "auto" and o.alpha == 1 and kernel_divergence(o.divergence, o.beta) == "fkl" \
            and not teacher_logits.requires_grad:  # one autograd node, the acceptance from the same pass
        per_row, acc = forward_kl_rows(student_logits, teacher_logits, o.temperature, return_acceptance)
        _, mask = o.flat_labels(per_row.shape[0], per_row.device)
        shape = student_logits.shape[:-1]
        loss = reduce_rows(per_row, mask, o.reduction, shape)
        return _with_acceptance(loss, acc.reshape(shape), o, True) if return_acceptance else loss
    loss = distill_loss(student_logits, teacher_logits, **options)
    acc = expected_acceptance(student_logits, teacher_logits, o.temperature) if return_acceptance else None
    return _with_acceptance(loss, acc, o, return_acceptance)


def compute_linear_distill_loss(
    student_hidden: torch.Tensor,  # [..., H]
    student_weight: torch.Tensor,  # [V, H] the draft's LM head
    teacher_logits: torch.Tensor | None = None,  # [..., V]
    *,
    teacher_hidden: torch.Tensor | None = None,  # [..., H_t]
    teacher_weight: torch.Tensor | None = None,  # [V, H_t]
    chunk_size: int | None = None,
    impl: str = "auto",
    return_acceptance: bool = False,
    **options,
):
    """``distill_loss(student_hidden @ student_weight.T, teacher, ...)`` without materializing the
    student logits: the chunked Triton path on CUDA, the chunked eager path elsewhere."""
    kw = dict(teacher_hidden=teacher_hidden, teacher_weight=teacher_weight, chunk_size=chunk_size,
              return_acceptance=return_acceptance, **options)
    teacher = teacher_logits if teacher_logits is not None else teacher_hidden
    if _use_triton(impl, student_hidden, (teacher, student_weight, teacher_weight)):
        from specdistill.kernels import fused_linear_distill_loss

        return fused_linear_distill_loss(student_hidden, student_weight, teacher_logits, **kw)
    return chunked_linear_distill_loss(student_hidden, student_weight, teacher_logits, **kw)


def compute_sparse_distill_loss(
    student_logits: torch.Tensor,  # [..., V]
    teacher_topk_logprobs: torch.Tensor,  # [..., K] log_softmax(teacher_logits / T) at its top-k
    teacher_topk_indices: torch.Tensor,  # [..., K] their token ids
    *,
    impl: str = "auto",
    return_acceptance: bool = False,
    **options,
):
    """``sparse_distill_loss`` (top-k + tail teacher) through the kernel or the eager twin; ``options``
    are ``LossOptions``."""
    o = LossOptions(**options)
    k = teacher_topk_indices.shape[-1]
    too_wide = f"K = {k} > {SPARSE_MAX_K} top-k entries" if k > SPARSE_MAX_K else None
    if _use_triton(impl, student_logits, (teacher_topk_logprobs,), too_wide):
        from specdistill.kernels import fused_sparse_distill_loss

        return fused_sparse_distill_loss(
            student_logits, teacher_topk_logprobs, teacher_topk_indices,
            return_acceptance=return_acceptance, **options,
        )
    loss = sparse_distill_loss(student_logits, teacher_topk_logprobs, teacher_topk_indices, **options)
    acc = None
    if return_acceptance:
        acc = sparse_expected_acceptance(
            student_logits, teacher_topk_logprobs, teacher_topk_indices, o.temperature
        )
    return _with_acceptance(loss, acc, o, return_acceptance)
