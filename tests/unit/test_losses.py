"""Reference losses against hand computation in float64, and their properties."""

import math

import pytest
import torch

from specdistill.losses import DIVERGENCES, distill_loss, expected_acceptance


def _hand(p, q, divergence, beta):
    """One row, written out term by term in float64 Python."""
    if divergence == "fkl":
        return sum(a * math.log(a / b) for a, b in zip(p, q) if a > 0)
    if divergence == "rkl":
        return sum(b * math.log(b / a) for a, b in zip(p, q) if b > 0)
    if divergence == "tvd":
        return 0.5 * sum(abs(a - b) for a, b in zip(p, q))
    m = [beta * a + (1 - beta) * b for a, b in zip(p, q)]
    kl_pm = sum(a * math.log(a / c) for a, c in zip(p, m) if a > 0)
    if divergence == "skl":
        return kl_pm
    kl_qm = sum(b * math.log(b / c) for b, c in zip(q, m) if b > 0)
    return beta * kl_pm + (1 - beta) * kl_qm


def _softmax(row, temperature):
    z = [x / temperature for x in row]
    top = max(z)
    e = [math.exp(x - top) for x in z]
    return [x / sum(e) for x in e]


@pytest.mark.parametrize("divergence", DIVERGENCES)
@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_matches_hand_computation(divergence, temperature):
    s, t = torch.randn(3, 7, dtype=torch.float64), torch.randn(3, 7, dtype=torch.float64)
    beta = 0.3
    expected = [
        temperature**2 * _hand(_softmax(tr.tolist(), temperature), _softmax(sr.tolist(), temperature), divergence, beta)
        for sr, tr in zip(s, t)
    ]
    got = distill_loss(s, t, divergence=divergence, temperature=temperature, beta=beta, reduction="none")
    assert got.tolist() == pytest.approx(expected, rel=1e-10, abs=1e-12)


@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_zero_when_equal_and_nonnegative(divergence):
    x = torch.randn(4, 5, 11)
    assert distill_loss(x, x.clone(), divergence=divergence).item() == pytest.approx(0, abs=1e-6)
    y = torch.randn(4, 5, 11) * 3
    assert (distill_loss(x, y, divergence=divergence, reduction="none") >= -1e-6).all()


def test_tvd_bounded_and_jsd_symmetric():
    x, y = torch.randn(50, 9) * 4, torch.randn(50, 9) * 4
    tvd = distill_loss(x, y, divergence="tvd", reduction="none")
    assert ((tvd >= 0) & (tvd <= 1)).all()
    a = distill_loss(x, y, divergence="jsd", beta=0.5, reduction="none")
    b = distill_loss(y, x, divergence="jsd", beta=0.5, reduction="none")
    torch.testing.assert_close(a, b)
    assert (a <= math.log(2) + 1e-6).all()


def test_acceptance_is_one_minus_tvd():
    x, y = torch.randn(6, 13), torch.randn(6, 13)
    tvd = distill_loss(x, y, divergence="tvd", reduction="none")
    torch.testing.assert_close(expected_acceptance(x, y), 1 - tvd)
    torch.testing.assert_close(expected_acceptance(x, x), torch.ones(6))


@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_gradcheck_float64(divergence):
    s = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    t = torch.randn(3, 6, dtype=torch.float64)
    labels = torch.tensor([1, -100, 4])

    def f(student):
        return distill_loss(student, t, divergence=divergence, temperature=1.7, labels=labels, alpha=0.7)

    assert torch.autograd.gradcheck(f, (s,))


def test_mask_excludes_positions_from_both_terms_and_mean_over_tokens():
    s, t = torch.randn(2, 5, 10), torch.randn(2, 5, 10)
    labels = torch.randint(0, 10, (2, 5))
    labels[0, 3:] = -100
    full = distill_loss(s, t, labels=labels, alpha=0.5, reduction="none")
    keep = labels != -100
    assert (full[~keep] == 0).all()
    mean = distill_loss(s, t, labels=labels, alpha=0.5)
    torch.testing.assert_close(mean, full[keep].mean())
    # Garbage at masked positions changes nothing.
    s2 = s.clone()
    s2[0, 3:] = 1e4
    torch.testing.assert_close(distill_loss(s2, t, labels=labels, alpha=0.5), mean)


def test_cross_entropy_mix():
    s, t = torch.randn(8, 10), torch.randn(8, 10)
    labels = torch.randint(0, 10, (8,))
    ce = torch.nn.functional.cross_entropy(s, labels)
    torch.testing.assert_close(distill_loss(s, t, labels=labels, alpha=0.0), ce)


def test_low_precision_inputs_use_fp32_math():
    s, t = torch.randn(4, 300) * 5, torch.randn(4, 300) * 5
    ref = distill_loss(s.bfloat16().float(), t.bfloat16().float())
    got = distill_loss(s.bfloat16(), t.bfloat16())
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, ref)


@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_extreme_and_infinite_logits_stay_finite(divergence):
    s = torch.tensor([[1e4, -1e4, 0.0, float("-inf")]], requires_grad=True)
    t = torch.tensor([[-1e4, 1e4, 0.0, float("-inf")]])
    loss = distill_loss(s, t, divergence=divergence)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s.grad).all()


def test_clear_errors():
    with pytest.raises(ValueError, match="vocabulary"):
        distill_loss(torch.randn(2, 5), torch.randn(2, 6))
    with pytest.raises(ValueError, match="unknown divergence"):
        distill_loss(torch.randn(2, 5), torch.randn(2, 5), divergence="kl")
    with pytest.raises(ValueError, match="needs labels"):
        distill_loss(torch.randn(2, 5), torch.randn(2, 5), alpha=0.5)
    with pytest.raises(ValueError, match="temperature"):
        distill_loss(torch.randn(2, 5), torch.randn(2, 5), temperature=0)
    with pytest.raises(ValueError, match="0 < beta < 1"):
        distill_loss(torch.randn(2, 5), torch.randn(2, 5), divergence="jsd", beta=1.0)
