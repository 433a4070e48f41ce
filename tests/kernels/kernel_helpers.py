"""Shared inputs and comparisons for the kernel tests (float64 references)."""

from __future__ import annotations

import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DIVERGENCES = ("fkl", "rkl", "jsd", "tvd", "skl")


def logits(n: int, vocab: int, seed: int, scale: float = 3.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Student and teacher logits [n, vocab] in float64, correlated like a half-trained draft."""
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(n, vocab, generator=g, dtype=torch.float64) * scale
    s = 0.6 * t + torch.randn(n, vocab, generator=g, dtype=torch.float64) * scale * 0.8
    return s, t


def labels_for(n: int, vocab: int, seed: int, masked=(1,)) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed + 1)
    labels = torch.randint(0, vocab, (n,), generator=g)
    for i in masked:
        labels[i] = -100
    return labels


def assert_close_scaled(actual: torch.Tensor, expected: torch.Tensor, rtol: float, what: str) -> None:
    """Element-wise |a - e| <= rtol * (|e| + max|e|): relative to the tensor's scale, since a
    gradient entry near zero carries the absolute error of its row."""
    actual = actual.detach().double().cpu()
    expected = expected.detach().double().cpu()
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    assert torch.isfinite(actual).all(), f"{what}: non-finite values"
    scale = expected.abs().max().clamp_min(1e-12)
    err = (actual - expected).abs()
    bound = rtol * (expected.abs() + scale)
    worst = (err / bound).max().item()
    assert worst <= 1, (
        f"{what}: max error {err.max().item():.3g} exceeds rtol {rtol} (scale {scale.item():.3g})"
    )
