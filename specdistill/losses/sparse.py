"""Eager twin of ``specdistill.kernels.fused_sparse_distill_loss``: a cached, sparse teacher.

The teacher is stored as its top-k log-probs per position (at the distillation
temperature: ``log_softmax(teacher_logits / T).topk(k)``) and their token ids;
the rest of its mass becomes one tail bucket ``P_t = 1 - sum_k p_k``. The
student's ``q = softmax(s / T)`` is folded into the same K + 1 buckets
(``Q_k = q[idx_k]``, ``Q_t`` = the mass on every other token), both tails get
``TAIL_EPS`` added so the logs stay finite, and the divergence is the reference
``divergence_per_row`` over the buckets. Everything else (T^2 scale, CE mix,
masking, reductions) is as in ``distill_loss``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from specdistill.kernels.loss_args import TAIL_EPS, LossOptions, check_sparse_teacher, reduce_rows
from specdistill.losses.reference import _as_float, divergence_per_row, with_cross_entropy


def sparse_teacher_buckets(
    log_q: torch.Tensor,  # [N, V] student log-probs (tempered)
    topk_logprobs: torch.Tensor,  # [N, K] teacher log-probs at its top-k
    topk_indices: torch.Tensor,  # [N, K]
) -> tuple[torch.Tensor, torch.Tensor]:  # log P, log Q: [N, K + 1] each, tail last
    q = log_q.exp()
    q_tail = q.scatter(-1, topk_indices, 0.0).sum(-1, keepdim=True)  # exact, no 1 - sum cancellation
    p_tail = (1 - topk_logprobs.exp().sum(-1, keepdim=True)).clamp_min(0)
    log_p = torch.cat([topk_logprobs, (p_tail + TAIL_EPS).log()], dim=-1)
    log_q_b = torch.cat([log_q.gather(-1, topk_indices), (q_tail + TAIL_EPS).log()], dim=-1)
    return log_p, log_q_b


def sparse_distill_loss(
    student_logits: torch.Tensor,  # [..., V]
    teacher_topk_logprobs: torch.Tensor,  # [..., K]
    teacher_topk_indices: torch.Tensor,  # [..., K], distinct per row
    **options,
) -> torch.Tensor:
    """``alpha * T^2 * D(P, Q) + (1 - alpha) * CE`` over top-k + tail buckets (see module doc)."""
    o = LossOptions(**options)
    o.check(student_logits.shape, student_logits.shape)
    check_sparse_teacher(student_logits, teacher_topk_logprobs, teacher_topk_indices)
    shape = student_logits.shape[:-1]
    vocab, k = student_logits.shape[-1], teacher_topk_indices.shape[-1]
    s = _as_float(student_logits).reshape(-1, vocab)
    lp = _as_float(teacher_topk_logprobs).reshape(-1, k).to(s.dtype)
    idx = teacher_topk_indices.reshape(-1, k).long()
    flat_labels, mask = o.flat_labels(s.shape[0], s.device)
    log_p_b, log_q_b = sparse_teacher_buckets(F.log_softmax(s / o.temperature, dim=-1), lp, idx)
    per_row = o.temperature**2 * divergence_per_row(log_p_b, log_q_b, o.divergence, o.beta)
    return reduce_rows(with_cross_entropy(per_row, s, flat_labels, mask, o.alpha), mask, o.reduction, shape)


@torch.no_grad()
def sparse_expected_acceptance(
    student_logits: torch.Tensor,  # [..., V]
    teacher_topk_logprobs: torch.Tensor,  # [..., K]
    teacher_topk_indices: torch.Tensor,  # [..., K]
    temperature: float = 1.0,
) -> torch.Tensor:  # [...]
    """``sum_b min(P_b, Q_b)`` over the top-k + tail buckets: an upper bound on the
    token-level acceptance ``sum_i min(p_i, q_i)``, which the sparse teacher cannot give."""
    check_sparse_teacher(student_logits, teacher_topk_logprobs, teacher_topk_indices)
    vocab, k = student_logits.shape[-1], teacher_topk_indices.shape[-1]
    s = _as_float(student_logits).reshape(-1, vocab)
    lp = _as_float(teacher_topk_logprobs).reshape(-1, k).to(s.dtype)
    log_p, log_q = sparse_teacher_buckets(
        F.log_softmax(s / temperature, dim=-1), lp, teacher_topk_indices.reshape(-1, k).long()
    )
    return torch.minimum(log_p.exp(), log_q.exp()).sum(-1).reshape(student_logits.shape[:-1])
