"""The one-node forward KL (``losses/forward_kl.py``) that ``impl="auto"`` runs off CUDA: the same
loss, gradient and acceptance as the eager reference, in float64."""

import pytest
import torch

from specdistill.losses import compute_distill_loss, distill_loss, expected_acceptance
from specdistill.losses.forward_kl import forward_kl_rows


def _logits(seed: int, shape=(2, 5, 11), dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype) * 3


@pytest.mark.parametrize("temperature", [1.0, 0.5, 2.0])
@pytest.mark.parametrize("reduction", ["sum", "mean", "none"])
def test_it_matches_the_reference_in_value_gradient_and_acceptance(temperature, reduction):
    student, teacher = _logits(0).requires_grad_(), _logits(1)
    teacher[0, 1, 3] = float("-inf")  # a token the teacher gives no mass: 0 log 0 = 0, no NaN
    labels = torch.arange(10).reshape(2, 5)
    labels[1, 2] = -100  # a position taken out of the loss
    options = dict(temperature=temperature, reduction=reduction, labels=labels)
    loss, acceptance = compute_distill_loss(student, teacher, return_acceptance=True, **options)
    reference_student = student.detach().clone().requires_grad_()
    reference = distill_loss(reference_student, teacher, **options)
    torch.testing.assert_close(loss, reference, rtol=1e-10, atol=1e-12)
    expected = expected_acceptance(student.detach(), teacher, temperature)
    expected[1, 2] = 0.0
    torch.testing.assert_close(acceptance, expected, rtol=1e-10, atol=1e-12)
    grad_out = torch.randn_like(loss)
    (grad,) = torch.autograd.grad(loss, student, grad_out)
    (reference_grad,) = torch.autograd.grad(reference, reference_student, grad_out)
    torch.testing.assert_close(grad, reference_grad, rtol=1e-9, atol=1e-12)
    assert torch.isfinite(grad).all() and grad[1, 2].abs().max() == 0


def test_its_gradient_passes_gradcheck():
    student, teacher = _logits(2, (3, 7)).requires_grad_(), _logits(3, (3, 7))
    torch.autograd.gradcheck(lambda s: forward_kl_rows(s, teacher, 0.7)[0], (student,))


def test_bf16_logits_take_an_fp32_loss_and_a_bf16_gradient():
    student = _logits(4, (4, 13), torch.bfloat16).requires_grad_()
    teacher = _logits(5, (4, 13), torch.bfloat16)
    loss = compute_distill_loss(student, teacher, reduction="sum")
    loss.backward()
    assert loss.dtype == torch.float32 and student.grad.dtype == torch.bfloat16
    reference = distill_loss(student.detach().float(), teacher.float(), reduction="sum")
    torch.testing.assert_close(loss, reference, rtol=1e-5, atol=1e-5)


def test_other_divergences_and_hard_labels_keep_the_reference_path():
    student, teacher = _logits(6).requires_grad_(), _logits(7)
    labels = torch.arange(10).reshape(2, 5)
    for options in (dict(divergence="jsd"), dict(divergence="rkl"), dict(alpha=0.5, labels=labels)):
        torch.testing.assert_close(compute_distill_loss(student, teacher, **options),
                                   distill_loss(student, teacher, **options), rtol=0, atol=0)
