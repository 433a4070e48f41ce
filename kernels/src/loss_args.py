"""Argument checks and constants shared by the kernels; imports torch only.

``specdistill.kernels`` may not import ``specdistill.losses`` (dependency
direction), so the options every loss takes (``LossOptions``) and their checks live
here, and the eager twins in ``specdistill.losses`` read them too.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

DIVERGENCES = ("fkl", "rkl", "jsd", "tvd", "skl")
REDUCTIONS = ("mean", "sum", "none")
# Codes passed to the kernels as a constexpr (the order is part of the kernel ABI).
DIV_CODE = {name: code for code, name in enumerate(DIVERGENCES)}
KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# Sparse teacher: mass added to the tail bucket of both distributions so the
# logs stay finite when the top-k cover (almost) everything; see sparse_teacher.py.
TAIL_EPS = 1e-10
# The sparse kernel holds a row's top-k in registers; beyond this, use the dense loss.
SPARSE_MAX_K = 4096


def check_args(
    student_shape: tuple,
    teacher_shape: tuple,
    divergence: str,
    temperature: float,
    beta: float,
    labels: torch.Tensor | None,
    alpha: float,
    reduction: str,
) -> None:
    """Validate the arguments of every distillation loss, eager or fused.

    Takes the shapes the logits have (or would have, for the fused-linear path)."""
    student_shape, teacher_shape = tuple(student_shape), tuple(teacher_shape)
    if student_shape != teacher_shape:
        raise ValueError(
            f"student logits {student_shape} and teacher logits "
            f"{teacher_shape} differ in shape; the draft and the target must share "
            "a vocabulary (last dimension) and be computed on the same positions"
        )
    if divergence not in DIVERGENCES:
        raise ValueError(f"unknown divergence {divergence!r}; choose one of {', '.join(DIVERGENCES)}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if divergence == "jsd" and not 0 < beta < 1:
        raise ValueError(f"jsd needs 0 < beta < 1, got {beta}")
    if divergence == "skl" and not 0 <= beta < 1:
        raise ValueError(f"skl needs 0 <= beta < 1, got {beta}")
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if alpha < 1 and labels is None:
        raise ValueError("alpha < 1 mixes in cross entropy, which needs labels")
    if labels is not None and tuple(labels.shape) != student_shape[:-1]:
        raise ValueError(
            f"labels {tuple(labels.shape)} must match the logits without the vocab dimension "
            f"{student_shape[:-1]}"
        )
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def kernel_divergence(divergence: str, beta: float) -> str:
    """skl with beta = 0 is exactly fkl (m = q); the kernels never see log(0)."""
    return "fkl" if divergence == "skl" and beta == 0 else divergence


def check_ce_labels(labels: torch.Tensor | None, mask: torch.Tensor, vocab: int, alpha: float) -> None:
    """The kernel reads ``logits[label]`` unchecked; an out-of-range label must fail here,
    as it does in ``F.cross_entropy``, instead of reading another row's memory."""
    if labels is None or alpha >= 1:
        return
    bad = mask & ((labels < 0) | (labels >= vocab))
    if bool(bad.any()):
        raise ValueError(
            f"labels must be in [0, {vocab}) or ignore_index; got {labels[bad][0].item()} "
            "at an unmasked position"
        )


def reduce_rows(per_row: torch.Tensor, mask: torch.Tensor, reduction: str, shape) -> torch.Tensor:
    """Mean over unmasked rows (0 when none are), sum, or per-position values; masked rows count as 0."""
    per_row = torch.where(mask, per_row, torch.zeros_like(per_row))
    if reduction == "none":
        return per_row.reshape(shape)
    if reduction == "sum":
        return per_row.sum()
    return per_row.sum() / mask.sum().clamp_min(1)


def row_scale(
    grad_out: torch.Tensor, mask: torch.Tensor, reduction: str, dtype=torch.float32
) -> torch.Tensor:
    """d(reduced loss)/d(row loss) times the upstream gradient, per row: [N] in ``dtype``."""
    if reduction == "none":
        return grad_out.reshape(-1).to(dtype) * mask
    scale = grad_out.to(dtype) * mask
    if reduction == "mean":
        scale = scale / mask.sum().clamp_min(1)
    return scale.contiguous()


def check_sparse_teacher(student_logits, topk_logprobs, topk_indices) -> None:
    """Shapes and token ids of a sparse teacher (shared with the eager twin's rules)."""
    if topk_logprobs.shape != topk_indices.shape:
        raise ValueError(
            f"teacher top-k log-probs {tuple(topk_logprobs.shape)} and indices "
            f"{tuple(topk_indices.shape)} must have the same shape [..., K]"
        )
    if topk_logprobs.shape[:-1] != student_logits.shape[:-1]:
        raise ValueError(
            f"teacher top-k {tuple(topk_logprobs.shape)} and student logits {tuple(student_logits.shape)} "
            "must cover the same positions (all dimensions but the last)"
        )
    vocab, k = student_logits.shape[-1], topk_indices.shape[-1]
    if not 0 < k <= vocab:
        raise ValueError(f"need 0 < K <= V, got K = {k} for V = {vocab}")
    if topk_indices.dtype.is_floating_point or topk_indices.dtype == torch.bool:
        raise TypeError(f"teacher top-k indices must be integers, got {topk_indices.dtype}")
    if bool(((topk_indices < 0) | (topk_indices >= vocab)).any()):
        raise ValueError(f"teacher top-k indices must be token ids in [0, {vocab})")


def linear_logits_shapes(
    hidden, weight, teacher_logits, teacher_hidden, teacher_weight
) -> tuple[tuple, tuple]:
    """Check the fused-linear inputs; return the shapes the student and teacher logits would have."""
    if weight.dim() != 2 or hidden.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"student hidden states {tuple(hidden.shape)} and LM head weight {tuple(weight.shape)} do not "
            "fit: the head must be [V, H] with H = hidden_states.shape[-1]"
        )
    if (teacher_logits is None) == (teacher_hidden is None):
        raise ValueError("pass the teacher either as teacher_logits or as teacher_hidden + teacher_weight")
    if teacher_logits is not None:
        if teacher_weight is not None:
            raise ValueError("teacher_weight goes with teacher_hidden, not with teacher_logits")
        return (*hidden.shape[:-1], weight.shape[0]), tuple(teacher_logits.shape)
    fits = teacher_weight is not None and teacher_weight.dim() == 2
    if not fits or teacher_hidden.shape[-1] != teacher_weight.shape[1]:
        raise ValueError(
            f"teacher hidden states {tuple(teacher_hidden.shape)} need a teacher LM head weight "
            "[V, H_teacher], "
            f"got {None if teacher_weight is None else tuple(teacher_weight.shape)}"
        )
    return (*hidden.shape[:-1], weight.shape[0]), (*teacher_hidden.shape[:-1], teacher_weight.shape[0])


def default_chunk_rows(n: int, vocab: int, elements: int) -> int:
    """Rows per chunk so that one chunk of logits holds about ``elements`` numbers."""
    return max(1, min(n, elements // max(vocab, 1)))


@dataclass(frozen=True, eq=False)
class LossOptions:
    """The keyword options of every public loss, typed once: ``distill_loss`` and its sparse and
    linear twins, their fused kernels, and the ``compute_*`` dispatchers all take them as ``**options``
    and read them here (an unknown name is a TypeError that names it).

    ``labels`` ([...], aligned with the logits) feed the hard-label term ``(1 - alpha) * CE``; a label
    equal to ``ignore_index`` takes its position out of both terms."""

    divergence: str = "fkl"
    temperature: float = 1.0
    beta: float = 0.5
    labels: torch.Tensor | None = None
    alpha: float = 1.0
    ignore_index: int = -100
    reduction: str = "mean"

    def check(self, student_shape: tuple, teacher_shape: tuple) -> None:
        check_args(student_shape, teacher_shape, self.divergence, self.temperature, self.beta, self.labels,
                   self.alpha, self.reduction)

    def flat_labels(self, rows: int, device) -> tuple[torch.Tensor | None, torch.Tensor]:
        """The labels as one contiguous row of ids (None without labels) and the mask of counted rows."""
        if self.labels is None:
            return None, torch.ones(rows, dtype=torch.bool, device=device)
        flat = self.labels.reshape(-1).contiguous()
        return flat, flat != self.ignore_index

