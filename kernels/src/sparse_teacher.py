"""Distillation from a sparse (cached) teacher: top-k log-probs plus one tail bucket.

The teacher arrives as ``lp_k = log p_k`` for K token ids per position
(already at temperature T: ``log_softmax(teacher_logits / T)`` gathered at its
top-k), the rest of its mass as one tail bucket ``P_t = 1 - sum_k p_k``. The
student's full ``q = softmax(s / T)`` is folded into the same K + 1 buckets:
``Q_k = q[idx_k]``, ``Q_t`` = the mass on the other V - K tokens. Both tails
get ``TAIL_EPS`` added so the logs stay finite when the top-k cover (nearly)
all the mass. Then, as in the dense kernel but over buckets b,

    loss = alpha * T^2 * D(P, Q) + (1 - alpha) * CE(s, label)

and with ``G_b = dD/dQ_b`` (``_math._q_dd_dq``; the smoothed tail enters G_t,
not the chain rule, since TAIL_EPS is a constant) and ``Gbar = sum_b Q_b G_b``,
the exact gradient of that loss with respect to the student logits is, per column j,

    top-k column idx_k:  T * Q_k (G_k - Gbar)
    any other column j:  T * q_j (G_t - Gbar)

plus the CE term ``(1 - alpha) * (softmax(s) - onehot)``. Acceptance is
``sum_b min(P_b, Q_b)``, an upper bound on the token-level ``sum min(p, q)``.

``Q_t`` is a difference ``1 - sum_k Q_k`` that cancels badly when the student is
confident, so it is taken as ``(S - sum_k e_k) / S`` with ``e = exp(z - max z)``
summed in fp64 and the same fp32 ``e_k`` in both sums. Forward: two passes over
V (max, then sum) plus a K-gather; backward: one pass, then the K top-k columns
are overwritten. Token ids within a row must be distinct.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from specdistill.kernels._math import _bwd_row_start, _online_lse, _q_dd_dq, _row_terms
from specdistill.kernels.fused_divergence import check_device, make_config
from specdistill.kernels.loss_args import (
    KERNEL_DTYPES,
    SPARSE_MAX_K,
    TAIL_EPS,
    LossOptions,
    check_ce_labels,
    check_sparse_teacher,
    reduce_rows,
    row_scale,
)


@triton.jit
def _sparse_fwd_kernel(
    s_ptr,  # [N, V] student logits, unit column stride
    lp_ptr,  # [N, K] teacher top-k log-probs (tempered), contiguous
    idx_ptr,  # [N, K] their token ids, contiguous
    labels_ptr,  # [N] integer labels, read when HAS_LABELS
    loss_ptr,  # [N] fp32 out
    acc_ptr,  # [N] fp32 out: sum over buckets of min(P, Q)
    stats_ptr,  # [N, 4] fp32 out: lse(s/T), sum_b Q_b dD/dQ_b, dD/dQ_t, lse(s)
    V, K, stride_s,
    inv_t, t_sq, beta, log_beta, log_1mbeta, alpha, ignore_index, tail_eps,
    DIV: tl.constexpr, HAS_LABELS: tl.constexpr, HAS_CE: tl.constexpr, RAW_LSE: tl.constexpr,
    BLOCK: tl.constexpr, BLOCK_K: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    s_row = s_ptr + row * stride_s
    if HAS_LABELS:
        label = tl.load(labels_ptr + row)
        if label == ignore_index:
            tl.store(loss_ptr + row, 0.0)
            tl.store(acc_ptr + row, 0.0)
            return

    # Pass 1: max of z = s/T (fixed before pass 2 so that e_k below is bit-identical to the
    # terms summed there), plus the raw log-sum-exp for CE.
    m = tl.full([], -1e30, tl.float32)
    m_r = tl.full([], -1e30, tl.float32)
    d_r = tl.zeros([], tl.float32)
    for start in range(0, V, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        s = tl.load(s_row + cols, mask=cols < V, other=float("-inf")).to(tl.float32)
        m = tl.maximum(m, tl.max(s * inv_t, 0))
        if RAW_LSE:
            m_r, d_r = _online_lse(m_r, d_r, s)
    # Pass 2: S = sum exp(z - m) in fp64.
    total = tl.zeros([BLOCK], tl.float64)
    for start in range(0, V, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        s = tl.load(s_row + cols, mask=cols < V, other=float("-inf")).to(tl.float32)
        total += tl.exp(s * inv_t - m).to(tl.float64)
    big_s = tl.sum(total, 0)
    lse_s = m + tl.log(big_s.to(tl.float32))

    # Buckets: top-k from a gather, tails as complements.
    ks = tl.arange(0, BLOCK_K)
    idx = tl.load(idx_ptr + row * K + ks, mask=ks < K, other=0)
    s_k = tl.load(s_row + idx, mask=ks < K, other=float("-inf")).to(tl.float32)
    e_k = tl.exp(s_k * inv_t - m)
    q_tail = tl.maximum(big_s - tl.sum(e_k.to(tl.float64), 0), 0.0) / big_s
    lq_tail = tl.log(q_tail.to(tl.float32) + tail_eps)
    lp_k = tl.load(lp_ptr + row * K + ks, mask=ks < K, other=float("-inf")).to(tl.float32)
    p_tail = tl.maximum(1.0 - tl.sum(tl.exp(lp_k).to(tl.float64), 0), 0.0)
    lp_tail = tl.log(p_tail.to(tl.float32) + tail_eps)
    lq_k = s_k * inv_t - lse_s
    term, _, low = _row_terms(lp_k, lq_k, DIV, beta, log_beta, log_1mbeta)
    term_t, _, low_t = _row_terms(lp_tail, lq_tail, DIV, beta, log_beta, log_1mbeta)
    # sum_b Q_b dD/dQ_b with the unsmoothed masses, and dD/dQ of the tail bucket.
    g_bar = tl.sum(_q_dd_dq(lp_k, lq_k, tl.exp(lq_k), DIV, beta, log_beta, log_1mbeta), 0)
    g_bar += _q_dd_dq(lp_tail, lq_tail, q_tail.to(tl.float32), DIV, beta, log_beta, log_1mbeta)
    one = tl.full([], 1.0, tl.float32)
    g_tail = _q_dd_dq(lp_tail, lq_tail, one, DIV, beta, log_beta, log_1mbeta)
    loss = t_sq * (tl.sum(term, 0) + term_t)
    lse_r = lse_s
    if HAS_CE:
        if RAW_LSE:
            lse_r = m_r + tl.log(d_r)
        loss = alpha * loss + (1.0 - alpha) * (lse_r - tl.load(s_row + label).to(tl.float32))
    tl.store(loss_ptr + row, loss)
    tl.store(acc_ptr + row, tl.sum(low, 0) + low_t)
    tl.store(stats_ptr + row * 4 + 0, lse_s)
    tl.store(stats_ptr + row * 4 + 1, g_bar)
    tl.store(stats_ptr + row * 4 + 2, g_tail)
    tl.store(stats_ptr + row * 4 + 3, lse_r)


@triton.jit
def _sparse_bwd_kernel(
    s_ptr,  # [N, V] student logits
    lp_ptr,  # [N, K] teacher top-k log-probs
    idx_ptr,  # [N, K] their token ids
    labels_ptr,  # [N] integer labels, read when HAS_LABELS
    stats_ptr,  # [N, 4] fp32 from the forward
    scale_ptr,  # [N] fp32: upstream gradient times d(reduction)/d(row loss)
    grad_ptr,  # [N, V] out: dloss/ds
    V, K, stride_s, stride_g,
    inv_t, soft_coef, ce_coef, beta, log_beta, log_1mbeta, ignore_index,
    DIV: tl.constexpr, HAS_LABELS: tl.constexpr, HAS_CE: tl.constexpr,
    BLOCK: tl.constexpr, BLOCK_K: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    s_row = s_ptr + row * stride_s
    g_row = grad_ptr + row * stride_g
    label, skip, lse_s, g_bar, g_tail, lse_r, scale = _bwd_row_start(
        labels_ptr, stats_ptr, scale_ptr, g_row, row, V, ignore_index, HAS_LABELS, BLOCK)
    if skip:
        return
    # Every column as if it were in the tail: q_j (dD/dQ_t - g_bar).
    for start in range(0, V, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        s = tl.load(s_row + cols, mask=cols < V, other=float("-inf")).to(tl.float32)
        g = (scale * soft_coef * (g_tail - g_bar)) * tl.exp(s * inv_t - lse_s)
        if HAS_CE:
            g += (scale * ce_coef) * (tl.exp(s - lse_r) - tl.where(cols == label, 1.0, 0.0))
        tl.store(g_row + cols, g, mask=cols < V)
    # The loop's stores to the top-k columns must land before they are overwritten.
    tl.debug_barrier()
    ks = tl.arange(0, BLOCK_K)
    idx = tl.load(idx_ptr + row * K + ks, mask=ks < K, other=0)
    s_k = tl.load(s_row + idx, mask=ks < K, other=float("-inf")).to(tl.float32)
    lp_k = tl.load(lp_ptr + row * K + ks, mask=ks < K, other=float("-inf")).to(tl.float32)
    lq_k = s_k * inv_t - lse_s
    q_k = tl.exp(lq_k)
    g = (scale * soft_coef) * (_q_dd_dq(lp_k, lq_k, q_k, DIV, beta, log_beta, log_1mbeta) - q_k * g_bar)
    if HAS_CE:
        g += (scale * ce_coef) * (tl.exp(s_k - lse_r) - tl.where(idx == label, 1.0, 0.0))
    tl.store(g_row + idx, g, mask=ks < K)


class FusedSparseDistillLoss(torch.autograd.Function):
    """Loss and per-row bucket acceptance forward; gradient for the student logits only."""

    @staticmethod
    def forward(ctx, s, lp, idx, labels, mask, cfg, reduction, shape):
        n, vocab = s.shape
        k = lp.shape[1]
        loss = torch.zeros(n, dtype=torch.float32, device=s.device)
        acc = torch.zeros_like(loss)
        stats = torch.empty(n, 4, dtype=torch.float32, device=s.device)
        log_beta, log_1mbeta = cfg.logs()
        t_ = cfg.temperature
        if n > 0:
            _sparse_fwd_kernel[(n,)](
                s, lp, idx, labels if labels is not None else idx, loss, acc, stats,
                vocab, k, s.stride(0),
                1.0 / t_, t_ * t_, cfg.beta, log_beta, log_1mbeta, cfg.alpha, cfg.ignore_index, TAIL_EPS,
                DIV=cfg.div, HAS_LABELS=cfg.has_labels, HAS_CE=cfg.has_ce, RAW_LSE=cfg.has_ce and t_ != 1.0,
                BLOCK=cfg.block, BLOCK_K=triton.next_power_of_2(k), num_warps=cfg.num_warps,
            )
        ctx.save_for_backward(s, lp, idx, labels, mask, stats)
        ctx.cfg, ctx.reduction = cfg, reduction
        acc = acc.reshape(shape)
        ctx.mark_non_differentiable(acc)
        return reduce_rows(loss, mask, reduction, shape), acc

    @staticmethod
    def backward(ctx, grad_loss, _grad_acc):
        s, lp, idx, labels, mask, stats = ctx.saved_tensors
        cfg = ctx.cfg
        n, vocab = s.shape
        grad = torch.empty_like(s)
        log_beta, log_1mbeta = cfg.logs()
        if n > 0:
            _sparse_bwd_kernel[(n,)](
                s, lp, idx, labels if labels is not None else idx, stats,
                row_scale(grad_loss, mask, ctx.reduction), grad,
                vocab, lp.shape[1], s.stride(0), grad.stride(0),
                1.0 / cfg.temperature, cfg.temperature * (cfg.alpha if cfg.has_ce else 1.0), 1.0 - cfg.alpha,
                cfg.beta, log_beta, log_1mbeta, cfg.ignore_index,
                DIV=cfg.div, HAS_LABELS=cfg.has_labels, HAS_CE=cfg.has_ce,
                BLOCK=cfg.block, BLOCK_K=triton.next_power_of_2(lp.shape[1]), num_warps=cfg.num_warps,
            )
        return grad, None, None, None, None, None, None, None


def fused_sparse_distill_loss(
    student_logits: torch.Tensor,  # [..., V] fp32 / bf16 / fp16
    teacher_topk_logprobs: torch.Tensor,  # [..., K] log_softmax(teacher_logits / T) at the top-k
    teacher_topk_indices: torch.Tensor,  # [..., K] their token ids, distinct per row
    *,
    return_acceptance: bool = False,
    block_size: int | None = None,
    **options,
):
    """Fused twin of ``specdistill.losses.sparse_distill_loss`` (see the module doc)."""
    opts = LossOptions(**options)
    opts.check(student_logits.shape, student_logits.shape)
    check_sparse_teacher(student_logits, teacher_topk_logprobs, teacher_topk_indices)
    if teacher_topk_indices.shape[-1] > SPARSE_MAX_K:
        raise ValueError(f"the sparse kernel takes K <= {SPARSE_MAX_K}; for a fuller teacher use the dense loss")
    if student_logits.dtype not in KERNEL_DTYPES:
        raise TypeError(f"student logits are {student_logits.dtype}; the kernel takes fp32, bf16 or fp16")
    check_device(student_logits, teacher_topk_logprobs, teacher_topk_indices, opts.labels)
    shape = student_logits.shape[:-1]
    vocab, k = student_logits.shape[-1], teacher_topk_indices.shape[-1]
    s = student_logits.reshape(-1, vocab)
    s = s if s.stride(-1) == 1 else s.contiguous()
    lp = teacher_topk_logprobs.detach().reshape(-1, k).float().contiguous()
    idx = teacher_topk_indices.reshape(-1, k).contiguous()
    flat, mask = opts.flat_labels(s.shape[0], s.device)
    check_ce_labels(flat, mask, vocab, opts.alpha)
    cfg = make_config(opts, flat is not None, vocab, block_size)
    loss, acc = FusedSparseDistillLoss.apply(s, lp, idx, flat, mask, cfg, opts.reduction, shape)
    return (loss, acc) if return_acceptance else loss
