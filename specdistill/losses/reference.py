"""Eager reference losses for distillation: the math, stated once, and the CPU path.

Every fused kernel in ``specdistill.kernels`` has a twin here with the same
signature; tests compare the two in value and gradient.

Notation (per position, over the vocabulary V):
    p = softmax(teacher_logits / T)   target distribution
    q = softmax(student_logits / T)   draft distribution

Divergences (all >= 0, zero iff p == q):
    fkl  forward KL      KL(p || q) = sum p (log p - log q)
    rkl  reverse KL      KL(q || p)
    jsd  generalized JSD beta * KL(p || m) + (1 - beta) * KL(q || m),  m = beta p + (1 - beta) q
         (symmetric at beta = 0.5; 0 < beta < 1)
    tvd  total variation 1/2 sum |p - q|            (in [0, 1])
    skl  skew KL         KL(p || beta p + (1 - beta) q)  (DistiLLM; 0 <= beta < 1)

The soft term is scaled by T**2 so gradient size does not depend on T. With
labels, ``alpha * soft + (1 - alpha) * CE(student_logits, labels)``; positions
whose label is ``ignore_index`` are excluded from *both* terms, and the mean is
taken over the unmasked positions (not over the batch, which would make the
loss scale move with sequence length).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from specdistill.kernels.loss_args import DIVERGENCES, LossOptions, reduce_rows


def _as_float(x: torch.Tensor) -> torch.Tensor:
    # fp32 math whatever the input dtype; float64 stays float64 (gradcheck).
    return x if x.dtype == torch.float64 else x.float()


def _kl_from_logs(log_a: torch.Tensor, log_b: torch.Tensor) -> torch.Tensor:
    """Row-wise KL(a || b) from log-probabilities, with 0 * log 0 = 0.

    The ``where`` comes before the product so no NaN reaches the gradient
    when a is exactly zero (for example a -inf logit)."""
    a = log_a.exp()
    diff = torch.where(a > 0, log_a - log_b, torch.zeros_like(log_a))
    return (a * diff).sum(-1)


def _log_mixture(log_p: torch.Tensor, log_q: torch.Tensor, beta: float) -> torch.Tensor:
    """log(beta p + (1 - beta) q). Logs are clamped to a finite floor first: where
    both are -inf the gradient of logaddexp would be 0/0, and those entries are
    excluded from every KL term anyway."""
    floor = -1e30
    return torch.logaddexp(log_p.clamp_min(floor) + math.log(beta), log_q.clamp_min(floor) + math.log1p(-beta))


def divergence_per_row(
    log_p: torch.Tensor,  # [N, V] teacher log-probs
    log_q: torch.Tensor,  # [N, V] student log-probs
    divergence: str,
    beta: float,
) -> torch.Tensor:  # [N]
    """One divergence per row, from log-probabilities already tempered."""
    if divergence == "fkl":
        return _kl_from_logs(log_p, log_q)
    if divergence == "rkl":
        return _kl_from_logs(log_q, log_p)
    if divergence == "jsd":
        log_m = _log_mixture(log_p, log_q, beta)
        return beta * _kl_from_logs(log_p, log_m) + (1 - beta) * _kl_from_logs(log_q, log_m)
    if divergence == "tvd":
        return 0.5 * (log_p.exp() - log_q.exp()).abs().sum(-1)
    if divergence == "skl":
        if beta == 0:
            return _kl_from_logs(log_p, log_q)
        log_m = _log_mixture(log_p, log_q, beta)
        return _kl_from_logs(log_p, log_m)
    raise ValueError(f"unknown divergence {divergence!r}; choose one of {', '.join(DIVERGENCES)}")


def distill_loss(
    student_logits: torch.Tensor,  # [..., V]
    teacher_logits: torch.Tensor,  # [..., V]
    **options,
) -> torch.Tensor:
    """Distillation loss ``alpha * T^2 * D(p_T, q_T) + (1 - alpha) * CE`` (see module doc); ``options``
    are ``LossOptions``: divergence, temperature, beta, labels, alpha, ignore_index, reduction."""
    o = LossOptions(**options)
    o.check(student_logits.shape, teacher_logits.shape)
    shape = student_logits.shape[:-1]
    vocab = student_logits.shape[-1]
    s = _as_float(student_logits).reshape(-1, vocab)
    t = _as_float(teacher_logits).reshape(-1, vocab).to(s.dtype)
    flat_labels, mask = o.flat_labels(s.shape[0], s.device)
    log_q = F.log_softmax(s / o.temperature, dim=-1)
    log_p = F.log_softmax(t / o.temperature, dim=-1)
    per_row = o.temperature**2 * divergence_per_row(log_p, log_q, o.divergence, o.beta)
    return reduce_rows(with_cross_entropy(per_row, s, flat_labels, mask, o.alpha), mask, o.reduction, shape)


def with_cross_entropy(per_row: torch.Tensor, s: torch.Tensor, flat_labels, mask, alpha: float) -> torch.Tensor:
    """``alpha * soft + (1 - alpha) * CE(s, labels)`` per row (the soft term alone when alpha is 1)."""
    if alpha == 1:
        return per_row
    safe_labels = torch.where(mask, flat_labels, torch.zeros_like(flat_labels))
    return alpha * per_row + (1 - alpha) * F.cross_entropy(s, safe_labels, reduction="none")


@torch.no_grad()
def expected_acceptance(
    student_logits: torch.Tensor,  # [..., V]
    teacher_logits: torch.Tensor,  # [..., V]
    temperature: float = 1.0,
) -> torch.Tensor:  # [...]
    """Per-position probability that speculative sampling accepts a draft token:
    ``sum_i min(p_i, q_i) = 1 - TV(p, q)`` (Leviathan et al., 2023)."""
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and teacher logits "
            f"{tuple(teacher_logits.shape)} differ in shape"
        )
    q = torch.softmax(_as_float(student_logits) / temperature, dim=-1)
    p = torch.softmax(_as_float(teacher_logits) / temperature, dim=-1)
    return torch.minimum(p, q).sum(-1)
