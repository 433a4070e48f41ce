"""Fused softmax-with-temperature + divergence, forward and backward, in Triton.

Math (per row, over the vocabulary V; T the temperature, z = s / T):

    q = softmax(s / T), p = softmax(t / T)
    loss = alpha * T^2 * D(p, q) + (1 - alpha) * CE(s, label)        (CE only when alpha < 1)
    dloss/ds = alpha * T * dD/dz + (1 - alpha) * (softmax(s) - onehot(label))

with D one of fkl, rkl, jsd, tvd, skl and dD/dz as in ``_math.py`` (the T^2
scale and the 1/T of dz/ds leave a factor T). Rows whose label is
``ignore_index`` contribute nothing and get a zero gradient.

Passes over V per row (one program per row, blocks of ``BLOCK`` columns):
forward 1) streaming log-sum-exp of s/T and t/T (and of s for CE), 2) the
divergence, its ``aux`` row sum and ``sum min(p, q)`` (acceptance);
backward 3) the gradient, scaled by the upstream gradient. Nothing of size
[N, V] is allocated except the gradient itself; the forward keeps four fp32
numbers per row for the backward.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from specdistill.kernels._math import _bwd_row_start, _dz, _online_lse, _row_terms, is_interpreted
from specdistill.kernels.loss_args import (
    DIV_CODE,
    KERNEL_DTYPES,
    LossOptions,
    check_ce_labels,
    kernel_divergence,
    reduce_rows,
    row_scale,
)


@triton.jit
def _fwd_kernel(
    s_ptr,  # [N, V] student logits (fp32 / bf16 / fp16), unit column stride
    t_ptr,  # [N, V] teacher logits
    labels_ptr,  # [N] integer labels, read when HAS_LABELS
    loss_ptr,  # [N] fp32 out: per-row loss (0 on masked rows)
    acc_ptr,  # [N] fp32 out: sum_i min(p_i, q_i)
    stats_ptr,  # [N, 4] fp32 out: lse(s/T), lse(t/T), aux, lse(s)
    V, stride_s, stride_t,
    inv_t, t_sq, beta, log_beta, log_1mbeta, alpha, ignore_index,
    DIV: tl.constexpr, HAS_LABELS: tl.constexpr, HAS_CE: tl.constexpr, RAW_LSE: tl.constexpr,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    s_row = s_ptr + row * stride_s
    t_row = t_ptr + row * stride_t
    if HAS_LABELS:
        label = tl.load(labels_ptr + row)
        if label == ignore_index:
            tl.store(loss_ptr + row, 0.0)
            tl.store(acc_ptr + row, 0.0)
            return

    # Pass 1: log-sum-exp of s/T, t/T (and of s itself when CE needs it at T != 1).
    m_s = tl.full([], -1e30, tl.float32)
    d_s = tl.zeros([], tl.float32)
    m_t = tl.full([], -1e30, tl.float32)
    d_t = tl.zeros([], tl.float32)
    m_r = tl.full([], -1e30, tl.float32)
    d_r = tl.zeros([], tl.float32)
    for start in range(0, V, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        s = tl.load(s_row + cols, mask=cols < V, other=float("-inf")).to(tl.float32)
        t = tl.load(t_row + cols, mask=cols < V, other=float("-inf")).to(tl.float32)
        m_s, d_s = _online_lse(m_s, d_s, s * inv_t)
        m_t, d_t = _online_lse(m_t, d_t, t * inv_t)
        if RAW_LSE:
            m_r, d_r = _online_lse(m_r, d_r, s)
    lse_s = m_s + tl.log(d_s)
    lse_t = m_t + tl.log(d_t)

    # Pass 2: divergence, its aux sum and the acceptance, from normalized log-probs.
    acc_d = tl.zeros([BLOCK], tl.float32)
    acc_a = tl.zeros([BLOCK], tl.float32)
    acc_m = tl.zeros([BLOCK], tl.float32)
    for start in range(0, V, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        s = tl.load(s_row + cols, mask=cols < V, other=float("-inf")).to(tl.float32)
        t = tl.load(t_row + cols, mask=cols < V, other=float("-inf")).to(tl.float32)
        term, aux, low = _row_terms(t * inv_t - lse_t, s * inv_t - lse_s, DIV, beta, log_beta, log_1mbeta)
        acc_d += term
        acc_a += aux
        acc_m += low
    loss = t_sq * tl.sum(acc_d, 0)
    lse_r = lse_s
    if HAS_CE:
        if RAW_LSE:
            lse_r = m_r + tl.log(d_r)
        s_label = tl.load(s_row + label).to(tl.float32)
        loss = alpha * loss + (1.0 - alpha) * (lse_r - s_label)
    tl.store(loss_ptr + row, loss)
    tl.store(acc_ptr + row, tl.sum(acc_m, 0))
    tl.store(stats_ptr + row * 4 + 0, lse_s)
    tl.store(stats_ptr + row * 4 + 1, lse_t)
    tl.store(stats_ptr + row * 4 + 2, tl.sum(acc_a, 0))
    tl.store(stats_ptr + row * 4 + 3, lse_r)


@triton.jit
def _bwd_kernel(
    s_ptr,  # [N, V] student logits
    t_ptr,  # [N, V] teacher logits
    labels_ptr,  # [N] integer labels, read when HAS_LABELS
    stats_ptr,  # [N, 4] fp32 from the forward
    scale_ptr,  # [N] fp32: upstream gradient times d(reduction)/d(row loss)
    grad_ptr,  # [N, V] out: dloss/ds; may alias s_ptr (each element is read before it is written)
    V, stride_s, stride_t, stride_g,
    inv_t, soft_coef, ce_coef, beta, log_beta, log_1mbeta, ignore_index,
    DIV: tl.constexpr, HAS_LABELS: tl.constexpr, HAS_CE: tl.constexpr, BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    s_row = s_ptr + row * stride_s
    t_row = t_ptr + row * stride_t
    g_row = grad_ptr + row * stride_g
    label, skip, lse_s, lse_t, aux, lse_r, scale = _bwd_row_start(
        labels_ptr, stats_ptr, scale_ptr, g_row, row, V, ignore_index, HAS_LABELS, BLOCK)
    if skip:
        return
    for start in range(0, V, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        s = tl.load(s_row + cols, mask=cols < V, other=float("-inf")).to(tl.float32)
        t = tl.load(t_row + cols, mask=cols < V, other=float("-inf")).to(tl.float32)
        dz = _dz(t * inv_t - lse_t, s * inv_t - lse_s, aux, DIV, beta, log_beta, log_1mbeta)
        g = (scale * soft_coef) * dz
        if HAS_CE:
            onehot = tl.where(cols == label, 1.0, 0.0)
            g += (scale * ce_coef) * (tl.exp(s - lse_r) - onehot)
        tl.store(g_row + cols, g, mask=cols < V)


@dataclass(frozen=True)
class _Config:
    div: int
    temperature: float
    beta: float
    alpha: float
    ignore_index: int
    has_labels: bool
    block: int
    num_warps: int

    @property
    def has_ce(self) -> bool:
        return self.alpha < 1

    def logs(self) -> tuple[float, float]:
        # log(beta) and log(1 - beta) for the mixture m; unused (and possibly log 0) outside jsd/skl.
        if self.div in (DIV_CODE["jsd"], DIV_CODE["skl"]):
            return math.log(self.beta), math.log1p(-self.beta)
        return 0.0, 0.0


def make_config(opts: LossOptions, has_labels: bool, vocab: int, block_size: int | None = None):
    block = block_size or min(4096, triton.next_power_of_2(vocab))
    # 16 warps at 4096 columns: one 16-byte load per thread per bf16 tensor, and (ptxas, sm_90)
    # 64 registers for the heaviest forward, so two programs fit per SM. Not yet tuned on a GPU.
    warps = 16 if block >= 4096 else 8 if block >= 2048 else 4
    return _Config(
        DIV_CODE[kernel_divergence(opts.divergence, opts.beta)], float(opts.temperature), float(opts.beta),
        float(opts.alpha), int(opts.ignore_index), has_labels, block, warps,
    )


def check_device(x: torch.Tensor, *others: torch.Tensor | None) -> None:
    """CUDA tensors (or the interpreter), all on one device: a kernel handed a pointer from
    another device reads garbage instead of failing."""
    if x.device.type != "cuda" and not is_interpreted(_fwd_kernel):
        raise RuntimeError(
            f"the Triton kernels need CUDA tensors (got {x.device.type}); on CPU use impl='torch', or set "
            "TRITON_INTERPRET=1 before importing specdistill.kernels to run them in Triton's interpreter"
        )
    for other in others:
        if other is not None and other.device != x.device:
            raise ValueError(f"all inputs must be on {x.device}; got one on {other.device}")


def launch_forward(
    s: torch.Tensor,  # [N, V]
    t: torch.Tensor,  # [N, V]
    labels: torch.Tensor | None,  # [N]
    cfg: _Config,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # loss [N], acceptance [N], stats [N, 4]
    n, vocab = s.shape
    loss = torch.empty(n, dtype=torch.float32, device=s.device)
    acc = torch.empty_like(loss)
    stats = torch.empty(n, 4, dtype=torch.float32, device=s.device)
    if n == 0:
        return loss, acc, stats
    log_beta, log_1mbeta = cfg.logs()
    t_ = cfg.temperature
    _fwd_kernel[(n,)](
        s, t, labels if labels is not None else s, loss, acc, stats,
        vocab, s.stride(0), t.stride(0),
        1.0 / t_, t_ * t_, cfg.beta, log_beta, log_1mbeta, cfg.alpha, cfg.ignore_index,
        DIV=cfg.div, HAS_LABELS=cfg.has_labels, HAS_CE=cfg.has_ce, RAW_LSE=cfg.has_ce and t_ != 1.0,
        BLOCK=cfg.block, num_warps=cfg.num_warps,
    )
    return loss, acc, stats


def launch_backward(
    s: torch.Tensor,  # [N, V]
    t: torch.Tensor,  # [N, V]
    labels: torch.Tensor | None,  # [N]
    stats: torch.Tensor,  # [N, 4]
    scale: torch.Tensor,  # [N] fp32
    cfg: _Config,
    out: torch.Tensor,  # [N, V] gradient, may be ``s`` itself
) -> torch.Tensor:
    n, vocab = s.shape
    if n == 0:
        return out
    log_beta, log_1mbeta = cfg.logs()
    soft_coef = cfg.temperature * (cfg.alpha if cfg.has_ce else 1.0)
    _bwd_kernel[(n,)](
        s, t, labels if labels is not None else s, stats, scale, out,
        vocab, s.stride(0), t.stride(0), out.stride(0),
        1.0 / cfg.temperature, soft_coef, 1.0 - cfg.alpha, cfg.beta, log_beta, log_1mbeta, cfg.ignore_index,
        DIV=cfg.div, HAS_LABELS=cfg.has_labels, HAS_CE=cfg.has_ce, BLOCK=cfg.block, num_warps=cfg.num_warps,
    )
    return out


class FusedDistillLoss(torch.autograd.Function):
    """Loss and per-row acceptance forward; gradient for the student logits only."""

    @staticmethod
    def forward(ctx, s, t, labels, mask, cfg, reduction, shape):
        loss_rows, acc, stats = launch_forward(s, t, labels, cfg)
        ctx.save_for_backward(s, t, labels, mask, stats)
        ctx.cfg, ctx.reduction = cfg, reduction
        acc = acc.reshape(shape)
        ctx.mark_non_differentiable(acc)
        return reduce_rows(loss_rows, mask, reduction, shape), acc

    @staticmethod
    def backward(ctx, grad_loss, _grad_acc):
        s, t, labels, mask, stats = ctx.saved_tensors
        scale = row_scale(grad_loss, mask, ctx.reduction)
        grad = launch_backward(s, t, labels, stats, scale, ctx.cfg, torch.empty_like(s))
        return grad, None, None, None, None, None, None


def fused_distill_loss(
    student_logits: torch.Tensor,  # [..., V] fp32 / bf16 / fp16
    teacher_logits: torch.Tensor,  # [..., V]
    *,
    return_acceptance: bool = False,
    block_size: int | None = None,
    **options,
):
    """Fused twin of ``specdistill.losses.distill_loss`` (same arguments and result).

    With ``return_acceptance=True`` also returns the per-position ``sum min(p, q)``
    (shape ``[...]``, 0 at masked positions, no gradient), computed in the same pass.
    The teacher gets no gradient. ``block_size`` (a power of two) overrides the
    column block, for tests and tuning."""
    opts = LossOptions(**options)
    opts.check(student_logits.shape, teacher_logits.shape)
    for name, x in (("student", student_logits), ("teacher", teacher_logits)):
        if x.dtype not in KERNEL_DTYPES:
            raise TypeError(f"{name} logits are {x.dtype}; the kernel takes fp32, bf16 or fp16")
    check_device(student_logits, teacher_logits, opts.labels)
    shape = student_logits.shape[:-1]
    vocab = student_logits.shape[-1]
    s = student_logits.reshape(-1, vocab)
    t = teacher_logits.detach().reshape(-1, vocab)
    s = s if s.stride(-1) == 1 else s.contiguous()
    t = t if t.stride(-1) == 1 else t.contiguous()
    flat, mask = opts.flat_labels(s.shape[0], s.device)
    check_ce_labels(flat, mask, vocab, opts.alpha)
    cfg = make_config(opts, flat is not None, vocab, block_size)
    loss, acc = FusedDistillLoss.apply(s, t, flat, mask, cfg, opts.reduction, shape)
    return (loss, acc) if return_acceptance else loss
