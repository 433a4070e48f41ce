"""Sparse (top-k + tail) teacher: the kernel vs its float64 eager twin, and the twin vs the dense
reference when the top-k cover the whole vocabulary."""

import pytest
import torch
from kernel_helpers import DEVICE, DIVERGENCES, assert_close_scaled, labels_for, logits
from specdistill.kernels import fused_sparse_distill_loss

from specdistill.losses import distill_loss, sparse_distill_loss, sparse_expected_acceptance


def _topk(t, temperature, k):
    return torch.log_softmax(t / temperature, dim=-1).topk(k, dim=-1)


@pytest.mark.parametrize("divergence", DIVERGENCES)
@pytest.mark.parametrize(
    ("dtype", "temperature", "reduction", "alpha"),
    [
        pytest.param(torch.float32, 1.0, "mean", 1.0, id="fp32-T1-mean"),
        pytest.param(torch.bfloat16, 2.5, "none", 0.7, id="bf16-T2.5-none-ce"),
    ],
)
def test_kernel_matches_eager_twin(divergence, dtype, temperature, reduction, alpha):
    n, vocab, k = 5, 1000, 37
    s, t = logits(n, vocab, seed=7)
    lp, idx = _topk(t, temperature, k)
    labels = labels_for(n, vocab, seed=7, masked=(2,))
    upstream = torch.tensor([1.5, 0.0, 2.0, -0.5, 1.0]) if reduction == "none" else None
    kw = dict(divergence=divergence, temperature=temperature, beta=0.4, alpha=alpha, reduction=reduction)

    s_in = s.to(dtype).to(DEVICE).requires_grad_()
    loss, acc = fused_sparse_distill_loss(
        s_in, lp.float().to(DEVICE), idx.to(DEVICE), labels=labels.to(DEVICE), block_size=256,
        return_acceptance=True, **kw,
    )
    loss.backward(None if upstream is None else upstream.to(DEVICE))
    s_ref = s_in.detach().cpu().double().requires_grad_()
    ref = sparse_distill_loss(s_ref, lp.float().double(), idx, labels=labels, **kw)
    ref.backward(None if upstream is None else upstream.double())

    assert_close_scaled(loss, ref, 2e-5, "loss")
    assert_close_scaled(s_in.grad, s_ref.grad, 2e-5 if dtype == torch.float32 else 1e-2, "grad")
    ref_acc = sparse_expected_acceptance(s_ref.detach(), lp.double(), idx, temperature)
    ref_acc[2] = 0
    assert_close_scaled(acc, ref_acc, 1e-5, "acceptance")
    assert (s_in.grad[2] == 0).all()


@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_full_topk_equals_dense(divergence):
    """K = V leaves an empty tail: sparse == dense up to the TAIL_EPS smoothing."""
    s, t = logits(3, 300, seed=9)
    lp, idx = _topk(t, 2.0, 300)
    kw = dict(divergence=divergence, temperature=2.0, beta=0.3)
    dense = distill_loss(s, t, **kw)
    assert_close_scaled(sparse_distill_loss(s, lp, idx, **kw), dense, 1e-6, "eager twin")
    fused = fused_sparse_distill_loss(s.float().to(DEVICE), lp.float().to(DEVICE), idx.to(DEVICE), **kw)
    assert_close_scaled(fused, dense, 2e-5, "kernel")


def test_confident_student_tail_is_accurate():
    """The student's tail mass is ~1e-8, where 1 - sum(top-k q) in fp32 is pure rounding (it gives
    6e-8 and 0 here); the tail columns' gradient, -P_t q_j / Q_t for fkl, depends on it directly."""
    s, t = logits(2, 2000, seed=3)
    s[:, :10] += 25.0
    idx = torch.arange(10).expand(2, 10).contiguous()
    lp = torch.log_softmax(t, -1)[:, :10]
    s_in = s.float().to(DEVICE).requires_grad_()
    fused_sparse_distill_loss(s_in, lp.float().to(DEVICE), idx.to(DEVICE), divergence="fkl").backward()
    s_ref = s.float().double().requires_grad_()
    sparse_distill_loss(s_ref, lp.float().double(), idx, divergence="fkl").backward()
    assert_close_scaled(s_in.grad[:, 10:], s_ref.grad[:, 10:], 1e-4, "tail-column grad")
    assert_close_scaled(s_in.grad[:, :10], s_ref.grad[:, :10], 1e-5, "top-k grad")


def test_bad_teacher_is_rejected():
    s, t = logits(2, 50, seed=1)
    lp, idx = _topk(t, 1.0, 5)
    with pytest.raises(ValueError, match="token ids"):
        fused_sparse_distill_loss(s.float().to(DEVICE), lp.float().to(DEVICE), (idx + 50).to(DEVICE))
    with pytest.raises(ValueError, match="same shape"):
        sparse_distill_loss(s, lp, idx[:, :3])
