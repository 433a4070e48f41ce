"""The dispatch point (impl="auto" | "triton" | "torch"), argument checks shared with the
reference, and the package's behaviour without triton or with a late TRITON_INTERPRET."""

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from kernel_helpers import DEVICE, assert_close_scaled, labels_for, logits

from specdistill.losses import (
    compute_distill_loss,
    compute_linear_distill_loss,
    compute_sparse_distill_loss,
    dispatch,
    distill_loss,
)

ROOT = Path(__file__).resolve().parents[2]


BAD_ARGS = [
    dict(teacher=(4, 9)),
    dict(divergence="kl"),
    dict(temperature=0.0),
    dict(divergence="jsd", beta=1.0),
    dict(divergence="skl", beta=-0.1),
    dict(alpha=1.5),
    dict(alpha=0.5),  # CE without labels
    dict(labels=torch.zeros(3, dtype=torch.long), alpha=0.5),
    dict(reduction="batchmean"),
]


@pytest.mark.parametrize("bad", BAD_ARGS)
def test_every_loss_checks_its_options_in_one_place(bad):
    """The eager twin, the dispatcher and the kernel read the same ``LossOptions``: one set of rules
    and messages, before any device or dtype check."""
    from specdistill.kernels import fused_distill_loss

    options = {k: v for k, v in bad.items() if k != "teacher"}
    s, t = torch.zeros(4, 10), torch.zeros(bad.get("teacher", (4, 10)))
    messages = set()
    for loss in (distill_loss, compute_distill_loss, fused_distill_loss):
        with pytest.raises(ValueError) as err:
            loss(s, t, **options)
        messages.add(str(err.value))
    assert len(messages) == 1


def test_an_unknown_option_is_named():
    with pytest.raises(TypeError, match="temprature"):
        compute_distill_loss(torch.zeros(2, 5), torch.zeros(2, 5), temprature=2.0)


def test_impls_agree_and_acceptance(caplog, monkeypatch):
    monkeypatch.setattr(dispatch, "_logged", set())  # each fallback reason is logged once per process
    s, t = logits(6, 700, seed=5)
    labels = labels_for(6, 700, seed=5, masked=(3,))
    kw = dict(divergence="jsd", temperature=2.0, labels=labels.to(DEVICE), alpha=0.9, return_acceptance=True)
    s32, t32 = s.float().to(DEVICE), t.float().to(DEVICE)
    with caplog.at_level(logging.INFO, logger="specdistill.losses.dispatch"):
        auto = compute_distill_loss(s32, t32, impl="auto", **kw)
    fused = compute_distill_loss(s32, t32, impl="triton", **kw)
    eager = compute_distill_loss(s32, t32, impl="torch", **kw)
    for got in (auto, fused):
        assert_close_scaled(got[0], eager[0], 1e-5, "loss")
        assert_close_scaled(got[1], eager[1], 1e-5, "acceptance")
    assert eager[1][3] == 0
    if DEVICE == "cpu":
        assert "eager PyTorch path" in caplog.text and "not CUDA" in caplog.text


def test_float64_falls_back_or_refuses():
    s, t = logits(3, 100, seed=1)
    s, t = s.to(DEVICE), t.to(DEVICE)
    torch.testing.assert_close(compute_distill_loss(s, t, impl="auto"), distill_loss(s, t))
    with pytest.raises(ValueError, match="float64"):
        compute_distill_loss(s, t, impl="triton")
    with pytest.raises(ValueError, match="impl must be one of"):
        compute_distill_loss(s, t, impl="cuda")
    t_req = t.clone().float().requires_grad_()
    with pytest.raises(ValueError, match="teacher requires a gradient"):
        compute_distill_loss(s.float(), t_req, impl="triton")


def test_linear_and_sparse_entry_points():
    g = torch.Generator().manual_seed(0)
    h = torch.randn(7, 16, generator=g).to(DEVICE)
    w = (torch.randn(500, 16, generator=g) * 0.5).to(DEVICE)
    t = torch.randn(7, 500, generator=g).to(DEVICE)
    a = compute_linear_distill_loss(h, w, t, divergence="tvd", impl="triton", chunk_size=3)
    b = compute_linear_distill_loss(h, w, t, divergence="tvd", impl="torch", chunk_size=3)
    assert_close_scaled(a, b, 1e-5, "linear")
    lp, idx = torch.log_softmax(t, -1).topk(20, -1)
    kw = dict(divergence="rkl", return_acceptance=True)
    a = compute_sparse_distill_loss(h @ w.t(), lp, idx, impl="triton", **kw)
    b = compute_sparse_distill_loss(h @ w.t(), lp, idx, impl="torch", **kw)
    assert_close_scaled(a[0], b[0], 1e-5, "sparse")
    assert_close_scaled(a[1], b[1], 1e-5, "sparse acceptance")


def _python(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=240,
        env={**os.environ, **env},
    )


def test_without_triton_the_eager_path_still_works():
    code = (
        "import sys; sys.modules['triton'] = None\n"  # what a machine without triton looks like
        "import torch, specdistill.kernels as k, specdistill.losses as L\n"
        "assert not k.triton_available()\n"
        "s, t = torch.randn(3, 50), torch.randn(3, 50)\n"
        "torch.testing.assert_close(L.compute_distill_loss(s, t), L.distill_loss(s, t))\n"
        "try:\n    k.fused_distill_loss\nexcept ImportError as e:\n    print('refused:', e)\n"
    )
    out = _python(code, TRITON_INTERPRET="0")
    assert out.returncode == 0, out.stderr
    assert "refused:" in out.stdout and "needs the triton package" in out.stdout


def test_interpret_set_after_triton_was_imported():
    code = (
        "import os, torch, triton, triton.language\n"  # e.g. transformers imported it first
        "os.environ['TRITON_INTERPRET'] = '1'\n"
        "from specdistill.kernels import fused_distill_loss\n"
        "from specdistill.losses import distill_loss\n"
        "s, t = torch.randn(2, 300), torch.randn(2, 300)\n"
        "torch.testing.assert_close(fused_distill_loss(s, t, divergence='rkl'), "
        "distill_loss(s, t, divergence='rkl'))\n"
    )
    out = _python(code, TRITON_INTERPRET="0")
    assert out.returncode == 0, out.stderr


def test_kernels_compile_for_sm90():
    """Lower every kernel to an H100/H200 binary (no GPU needed): the interpreter alone does
    not exercise Triton's compiler."""
    out = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("compile_for_gpu.py"))], cwd=ROOT, capture_output=True,
        text=True, timeout=600, env={**os.environ, "TRITON_INTERPRET": "0", "TRITON_DEFAULT_FP_FUSION": "1"},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "compiled" in out.stdout
