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

from specdistill.kernels._args import DIVERGENCES, check_args, reduce_rows


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


def check_loss_args(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    divergence: str,
    temperature: float,
    beta: float,
    labels: torch.Tensor | None,
    alpha: float,
    reduction: str,
) -> None:
    """Validate arguments shared by the reference and the fused implementations
    (one set of rules and messages, in ``specdistill.kernels._args``)."""
    check_args(student_logits.shape, teacher_logits.shape, divergence, temperature, beta, labels, alpha, reduction)


def distill_loss(
    student_logits: torch.Tensor,  # [..., V]
    teacher_logits: torch.Tensor,  # [..., V]
    *,
    divergence: str = "fkl",
    temperature: float = 1.0,
    beta: float = 0.5,
    labels: torch.Tensor | None = None,  # [...], already aligned with the logits
    alpha: float = 1.0,
    ignore_index: int = -100,
    reduction: str = "mean",
) -> torch.Tensor:
    """Distillation loss ``alpha * T^2 * D(p_T, q_T) + (1 - alpha) * CE`` (see module doc)."""
    check_loss_args(student_logits, teacher_logits, divergence, temperature, beta, labels, alpha, reduction)
    shape = student_logits.shape[:-1]
    vocab = student_logits.shape[-1]
    s = _as_float(student_logits).reshape(-1, vocab)
    t = _as_float(teacher_logits).reshape(-1, vocab).to(s.dtype)
    flat_labels = None if labels is None else labels.reshape(-1)
    mask = torch.ones(s.shape[0], dtype=torch.bool, device=s.device)
    if flat_labels is not None:
        mask = flat_labels != ignore_index

    log_q = F.log_softmax(s / temperature, dim=-1)
    log_p = F.log_softmax(t / temperature, dim=-1)
    per_row = temperature**2 * divergence_per_row(log_p, log_q, divergence, beta)
    if alpha < 1:
        safe_labels = torch.where(mask, flat_labels, torch.zeros_like(flat_labels))
        ce = F.cross_entropy(s, safe_labels, reduction="none")
        per_row = alpha * per_row + (1 - alpha) * ce
    return reduce_rows(per_row, mask, reduction, shape)


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
