"""Forward KL with temperature as one autograd node, in cache-sized blocks of rows: the eager
path's fast case off CUDA.

``distill_loss`` (``reference.py``) is the readable twin of the kernels: a chain of tensor ops whose
autograd keeps each [N, V] intermediate and runs a backward for each. Forward KL alone (the default
divergence, no hard-label term) has a closed-form gradient,

    d/ds T^2 KL(p_T || q_T) = T (q_T - p_T),

so the forward keeps only each row's two log-normalizers and the backward recomputes p and q from
the logits, a block of rows at a time: on a CPU the [N, V] passes are bound by memory, and a block
that stays in cache runs them several times faster. The acceptance ``sum min(p, q)`` comes from the
same softmaxes when asked for. On a 2-core CPU the loss of an EAGLE-3 head's training step
(13k-token draft vocabulary) was a third of the step (bench/RESULTS.md).
"""

from __future__ import annotations

import torch

# A block's [rows, V] fp32 tensors (4 MB each) stay in cache: 5x the reference's speed on a 2-core EPYC.
BLOCK_ELEMENTS = 1 << 20


class _ForwardKL(torch.autograd.Function):
    @staticmethod
    def forward(ctx, student: torch.Tensor, teacher: torch.Tensor, temperature: float, with_acceptance: bool):
        dtype = torch.float64 if student.dtype == torch.float64 else torch.float32
        rows, vocab = student.shape
        per_row = torch.empty(rows, dtype=dtype, device=student.device)
        acceptance = torch.zeros(rows if with_acceptance else 0, dtype=dtype, device=student.device)
        norms = torch.empty(2, rows, dtype=dtype, device=student.device)  # logsumexp of s / T and t / T
        for block in _blocks(rows, vocab):
            log_q, norms[0, block] = _log_softmax(student[block], temperature, dtype)
            log_p, norms[1, block] = _log_softmax(teacher[block], temperature, dtype)
            p = log_p.exp()
            # 0 log 0 = 0 where the teacher gives a token no mass (a -inf logit).
            per_row[block] = (p * torch.where(p > 0, log_p.sub_(log_q), 0.0)).sum(-1)
            if with_acceptance:
                acceptance[block] = torch.minimum(p, log_q.exp_()).sum(-1)
        ctx.save_for_backward(student, teacher, norms)
        ctx.temperature = temperature
        ctx.mark_non_differentiable(acceptance)
        return temperature**2 * per_row, acceptance

    @staticmethod
    def backward(ctx, grad_rows: torch.Tensor, _grad_acceptance):
        student, teacher, norms = ctx.saved_tensors
        temperature, dtype = ctx.temperature, norms.dtype
        grad = torch.empty_like(student)
        scale = temperature * grad_rows.to(dtype)
        for block in _blocks(*student.shape):
            q = _log_softmax(student[block], temperature, dtype, norms[0, block])[0].exp_()
            p = _log_softmax(teacher[block], temperature, dtype, norms[1, block])[0].exp_()
            grad[block] = q.sub_(p).mul_(scale[block, None])
        return grad, None, None, None


def _blocks(rows: int, vocab: int):
    size = max(1, BLOCK_ELEMENTS // max(vocab, 1))
    return [slice(start, min(start + size, rows)) for start in range(0, rows, size)]


def _log_softmax(logits: torch.Tensor, temperature: float, dtype, norm: torch.Tensor | None = None):
    """(log_softmax(logits / T) as a new tensor of ``dtype``, its log-normalizer), reusing ``norm``."""
    x = logits.to(dtype, copy=True).div_(temperature)
    if norm is None:
        norm = torch.logsumexp(x, -1)
    return x.sub_(norm[:, None]), norm


def forward_kl_rows(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float,
                    with_acceptance: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of the flattened [N, V] logits: (T^2 KL(p_T || q_T), differentiable in the student;
    acceptance sum min(p_T, q_T) without a gradient, or an empty tensor when not asked for). The
    teacher takes no gradient."""
    vocab = student_logits.shape[-1]
    return _ForwardKL.apply(student_logits.reshape(-1, vocab), teacher_logits.reshape(-1, vocab).detach(),
                            temperature, with_acceptance)
