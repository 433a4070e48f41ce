"""fused_distill_loss vs the float64 reference: value, gradient, acceptance, masking, extremes."""

import pytest
import torch
from kernel_helpers import DEVICE, DIVERGENCES, assert_close_scaled, labels_for, logits
from specdistill.kernels import fused_distill_loss

from specdistill.losses import distill_loss, expected_acceptance

# (vocab, block, dtype, T, reduction, alpha, labels?) — a vocab that is not a power of two
# and spans several blocks, both dtypes, both temperatures, every reduction, CE mixing.
CASES = [
    pytest.param(1000, 256, torch.float32, 1.0, "mean", 1.0, True, id="v1000-fp32-T1-mean-mask"),
    pytest.param(1000, 256, torch.bfloat16, 2.5, "none", 1.0, True, id="v1000-bf16-T2.5-none"),
    pytest.param(5003, None, torch.float32, 2.5, "sum", 0.6, True, id="v5003-fp32-T2.5-sum-ce"),
    pytest.param(1000, 128, torch.bfloat16, 1.0, "mean", 0.5, True, id="v1000-bf16-T1-mean-ce"),
    pytest.param(777, 256, torch.float16, 2.5, "mean", 1.0, False, id="v777-fp16-nolabels"),
]


def _run_both(s64, t64, dtype, block, reduction, upstream, **kw):
    """Loss and student gradient from the kernel (inputs in ``dtype``) and from the float64
    reference on the same rounded inputs."""
    s_in = s64.to(dtype).to(DEVICE).requires_grad_()
    t_in = t64.to(dtype).to(DEVICE)
    loss = fused_distill_loss(s_in, t_in, reduction=reduction, block_size=block, **kw)
    loss.backward(upstream.to(DEVICE) if upstream is not None else None)
    s_ref = s_in.detach().cpu().double().requires_grad_()
    ref = distill_loss(s_ref, t_in.detach().cpu().double(), reduction=reduction, **kw)
    ref.backward(upstream.double() if upstream is not None else None)
    return loss, s_in.grad, ref, s_ref.grad


@pytest.mark.parametrize("divergence", DIVERGENCES)
@pytest.mark.parametrize(
    ("vocab", "block", "dtype", "temperature", "reduction", "alpha", "with_labels"), CASES
)
def test_matches_reference(divergence, vocab, block, dtype, temperature, reduction, alpha, with_labels):
    n = 5
    s, t = logits(n, vocab, seed=vocab + len(divergence))
    labels = labels_for(n, vocab, seed=3, masked=(1,)) if with_labels else None
    if reduction == "none":
        upstream = torch.tensor([0.7, 2.0, 0.0, -1.3, 0.25])  # not 1, with a zero
    else:
        upstream = torch.tensor(1.7)
    kw = dict(divergence=divergence, temperature=temperature, beta=0.3, alpha=alpha,
              labels=None if labels is None else labels.to(DEVICE))
    loss, grad, ref, ref_grad = _run_both(s, t, dtype, block, reduction, upstream, **kw)
    kw["labels"] = labels
    loss_tol = 2e-5
    grad_tol = 2e-5 if dtype == torch.float32 else 1e-2  # the gradient is stored in the input dtype
    assert loss.dtype == torch.float32
    assert_close_scaled(loss, ref, loss_tol, "loss")
    assert_close_scaled(grad, ref_grad, grad_tol, "grad")
    if labels is not None:
        assert (grad[1] == 0).all(), "masked row must get an exact zero gradient"


@pytest.mark.parametrize("divergence", ["fkl", "jsd", "tvd"])
def test_vocab_49152(divergence):
    s, t = logits(3, 49152, seed=11)
    labels = labels_for(3, 49152, seed=5, masked=(2,))
    kw = dict(divergence=divergence, temperature=2.5, beta=0.5, labels=labels.to(DEVICE), alpha=0.8)
    loss, grad, ref, ref_grad = _run_both(s, t, torch.float32, None, "mean", torch.tensor(0.5), **kw)
    assert_close_scaled(loss, ref, 2e-5, "loss")
    assert_close_scaled(grad, ref_grad, 2e-5, "grad")


def _extreme_inputs(divergence):
    """Rows with +-1e4 logits and with -inf entries that keep the divergence finite."""
    s, t = logits(4, 1000, seed=21, scale=2.0)
    s[0, 5], t[0, 7] = 1e4, 1e4  # saturated softmax, different argmax: huge but finite loss
    s[1, :3], t[1, 3:6] = -1e4, -1e4
    s[2, 10:20] = t[2, 10:20] = float("-inf")  # shared -inf columns (vocabulary padding)
    if divergence == "rkl":  # KL(q || p) stays finite when only q has zeros
        s[3, 30:40] = float("-inf")
    else:  # KL(p || q), JSD, TV, skew KL stay finite when only p has zeros
        t[3, 30:40] = float("-inf")
    return s, t


@pytest.mark.parametrize("divergence", DIVERGENCES)
@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_extreme_logits(divergence, temperature):
    s, t = _extreme_inputs(divergence)
    s_in = s.float().to(DEVICE).requires_grad_()
    loss = fused_distill_loss(s_in, t.float().to(DEVICE), divergence=divergence, temperature=temperature,
                              beta=0.3, reduction="none", block_size=256)
    loss.sum().backward()
    assert torch.isfinite(loss).all() and torch.isfinite(s_in.grad).all()
    s_ref = s.clone().requires_grad_()
    ref = distill_loss(s_ref, t, divergence=divergence, temperature=temperature, beta=0.3, reduction="none")
    ref.sum().backward()
    for row in range(4):  # row by row: row 0's loss is ~1e4, the others O(1)
        assert_close_scaled(loss[row], ref[row], 1e-5, f"loss row {row}")
        assert_close_scaled(s_in.grad[row], s_ref.grad[row], 1e-5, f"grad row {row}")
    assert (s_in.grad[2, 10:20] == 0).all(), "p = q = 0 columns get an exact zero gradient"


def test_acceptance_in_the_same_pass():
    s, t = logits(6, 1000, seed=2)
    labels = labels_for(6, 1000, seed=2, masked=(0, 4))
    loss, acc = fused_distill_loss(s.float().to(DEVICE), t.float().to(DEVICE), temperature=2.0,
                                   labels=labels.to(DEVICE), block_size=256, return_acceptance=True)
    ref = expected_acceptance(s, t, temperature=2.0)
    ref[[0, 4]] = 0
    assert acc.shape == (6,) and not acc.requires_grad
    assert_close_scaled(acc, ref, 1e-5, "acceptance")


def test_batched_shape_and_all_masked():
    s, t = logits(6, 300, seed=4)
    s3, t3 = s.float().reshape(2, 3, 300).to(DEVICE), t.float().reshape(2, 3, 300).to(DEVICE)
    out = fused_distill_loss(s3, t3, divergence="rkl", reduction="none")
    assert out.shape == (2, 3)
    assert_close_scaled(out, distill_loss(s.reshape(2, 3, 300), t.reshape(2, 3, 300), divergence="rkl",
                                          reduction="none"), 1e-5, "batched")
    s_in = s3.clone().requires_grad_()
    labels = torch.full((2, 3), -100, device=DEVICE)
    loss = fused_distill_loss(s_in, t3, labels=labels, alpha=0.5)
    loss.backward()
    assert loss.item() == 0 and (s_in.grad == 0).all()


def test_skl_beta_zero_is_fkl():
    s, t = logits(3, 500, seed=8)
    a = fused_distill_loss(s.float().to(DEVICE), t.float().to(DEVICE), divergence="skl", beta=0.0)
    b = fused_distill_loss(s.float().to(DEVICE), t.float().to(DEVICE), divergence="fkl")
    assert torch.equal(a, b)


def test_rejects_float64_and_bad_args():
    s, t = logits(2, 100, seed=0)
    with pytest.raises(TypeError, match="fp32, bf16 or fp16"):
        fused_distill_loss(s.to(DEVICE), t.to(DEVICE))
    with pytest.raises(ValueError, match="differ in shape"):
        fused_distill_loss(s.float().to(DEVICE), t[:, :50].float().to(DEVICE))
    with pytest.raises(ValueError, match="labels must be in"):
        bad_labels = torch.tensor([3, 100]).to(DEVICE)
        fused_distill_loss(s.float().to(DEVICE), t.float().to(DEVICE), labels=bad_labels, alpha=0.5)
