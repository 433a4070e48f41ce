"""Fused-linear (chunked) loss, eager and Triton, vs the materialized float64 reference."""

import pytest
import torch
from kernel_helpers import DEVICE, assert_close_scaled, labels_for
from specdistill.kernels import fused_linear_distill_loss

from specdistill.losses import chunked_linear_distill_loss, distill_loss


def _inputs(n=11, hidden=24, vocab=1000, teacher_hidden=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, hidden, generator=g, dtype=torch.float64)
    w = torch.randn(vocab, hidden, generator=g, dtype=torch.float64) * 0.4
    th = torch.randn(n, teacher_hidden, generator=g, dtype=torch.float64)
    tw = torch.randn(vocab, teacher_hidden, generator=g, dtype=torch.float64) * 0.4
    return h, w, th, tw


def _reference(h, w, teacher_logits, upstream, **kw):
    h = h.detach().double().cpu().requires_grad_()
    w = w.detach().double().cpu().requires_grad_()
    loss = distill_loss(h @ w.t(), teacher_logits.double().cpu(), **kw)
    loss.backward(upstream.double())
    return loss, h.grad, w.grad


CASES = [  # (reduction, teacher given as, alpha, chunk rows)
    pytest.param("mean", "logits", 1.0, 4, id="mean-logits"),
    pytest.param("sum", "hidden", 0.7, 3, id="sum-hidden-ce"),
    pytest.param("none", "hidden", 1.0, 5, id="none-hidden"),
]


@pytest.mark.parametrize("impl", ["torch", "triton"])
@pytest.mark.parametrize(("reduction", "teacher_as", "alpha", "chunk"), CASES)
@pytest.mark.parametrize("divergence", ["fkl", "jsd", "tvd"])
def test_matches_materialized_reference(impl, reduction, teacher_as, alpha, chunk, divergence):
    h, w, th, tw = _inputs(seed=len(divergence))
    n = h.shape[0]
    labels = labels_for(n, w.shape[0], seed=1, masked=(2, 7))
    upstream = torch.tensor(0.6)
    if reduction == "none":  # per-row, not 1, with zeros
        upstream = torch.linspace(-1, 2, n) * (torch.arange(n) % 4 != 0)
    kw = dict(divergence=divergence, temperature=2.5, beta=0.4, alpha=alpha, reduction=reduction)
    dtype = torch.float64 if impl == "torch" else torch.float32
    h_in = h.to(dtype).to(DEVICE).requires_grad_()
    w_in = w.to(dtype).to(DEVICE).requires_grad_()
    teacher = dict(teacher_logits=(th @ tw.t()).to(dtype).to(DEVICE)) if teacher_as == "logits" else dict(
        teacher_hidden=th.to(dtype).to(DEVICE), teacher_weight=tw.to(dtype).to(DEVICE))
    fn = chunked_linear_distill_loss if impl == "torch" else fused_linear_distill_loss
    loss = fn(h_in, w_in, labels=labels.to(DEVICE), chunk_size=chunk, **teacher, **kw)
    loss.backward(upstream.to(dtype).to(DEVICE))
    ref, ref_h, ref_w = _reference(h, w, th @ tw.t(), upstream, labels=labels, **kw)
    tol = 1e-9 if impl == "torch" else 3e-5
    assert_close_scaled(loss, ref, tol, "loss")
    assert_close_scaled(h_in.grad, ref_h, tol, "grad hidden")
    assert_close_scaled(w_in.grad, ref_w, tol, "grad weight")


@pytest.mark.parametrize("impl", ["torch", "triton"])
def test_bf16_frozen_head_and_acceptance(impl):
    """A frozen (shared) head gets no gradient and costs none; acceptance matches the reference."""
    h, w, th, tw = _inputs(n=6, seed=5)
    h_in = h.to(torch.bfloat16).to(DEVICE).requires_grad_()
    w_in = w.to(torch.bfloat16).to(DEVICE)
    t = (th @ tw.t()).to(torch.bfloat16).to(DEVICE)
    fn = chunked_linear_distill_loss if impl == "torch" else fused_linear_distill_loss
    loss, acc = fn(h_in, w_in, t, divergence="rkl", temperature=2.0, chunk_size=4, return_acceptance=True)
    loss.backward()
    s_ref = (h_in.detach().double().cpu() @ w_in.double().cpu().t()).requires_grad_()
    ref = distill_loss(s_ref, t.double().cpu(), divergence="rkl", temperature=2.0)
    ref.backward()
    assert_close_scaled(loss, ref, 1e-3, "loss")
    assert_close_scaled(h_in.grad, s_ref.grad @ w_in.double().cpu(), 2e-2, "grad hidden")
    assert w_in.grad is None and not acc.requires_grad
    q = torch.softmax(s_ref.detach() / 2.0, -1)
    p = torch.softmax(t.double().cpu() / 2.0, -1)
    assert_close_scaled(acc, torch.minimum(p, q).sum(-1), 1e-3, "acceptance")


def test_no_grad_and_shape_errors():
    h, w, th, tw = _inputs(n=4)
    with torch.no_grad():
        loss = chunked_linear_distill_loss(h.requires_grad_(), w, teacher_hidden=th, teacher_weight=tw)
    ref = distill_loss(h.detach() @ w.t(), th @ tw.t())
    assert_close_scaled(loss, ref, 1e-9, "no-grad loss")
    with pytest.raises(ValueError, match="do not fit"):
        chunked_linear_distill_loss(h, w[:, :5], th @ tw.t())
    with pytest.raises(ValueError, match="either as teacher_logits"):
        chunked_linear_distill_loss(h, w)
    with pytest.raises(ValueError, match="differ in shape"):
        chunked_linear_distill_loss(h, w, (th @ tw.t())[:, :10])
