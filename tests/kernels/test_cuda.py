"""CUDA-only checks at real sizes (vocab 151936, bf16); skipped on machines without a GPU."""

import pytest
import torch
from kernel_helpers import DIVERGENCES, assert_close_scaled, labels_for, logits

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

VOCAB = 151936  # Qwen2 vocabulary: not a power of two, 37.1 blocks of 4096


@pytest.mark.parametrize("divergence", DIVERGENCES)
@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_fused_bf16_large_vocab(divergence, temperature):
    from specdistill.kernels import fused_distill_loss

    from specdistill.losses import distill_loss, expected_acceptance

    s, t = logits(8, VOCAB, seed=1)
    labels = labels_for(8, VOCAB, seed=1, masked=(5,))
    s_in = s.to(torch.bfloat16).cuda().requires_grad_()
    t_in = t.to(torch.bfloat16).cuda()
    kw = dict(divergence=divergence, temperature=temperature, beta=0.3, alpha=0.9)
    loss, acc = fused_distill_loss(s_in, t_in, labels=labels.cuda(), return_acceptance=True, **kw)
    loss.backward(torch.tensor(1.3, device="cuda"))
    s_ref = s_in.detach().double().cpu().requires_grad_()
    ref = distill_loss(s_ref, t_in.double().cpu(), labels=labels, **kw)
    ref.backward(torch.tensor(1.3, dtype=torch.float64))
    assert_close_scaled(loss, ref, 2e-5, "loss")
    assert_close_scaled(s_in.grad, s_ref.grad, 1e-2, "grad")
    ref_acc = expected_acceptance(s_ref.detach(), t_in.double().cpu(), temperature)
    ref_acc[5] = 0
    assert_close_scaled(acc, ref_acc, 1e-4, "acceptance")


@pytest.mark.parametrize("divergence", ["fkl", "jsd"])
def test_fused_linear_bf16(divergence):
    from specdistill.kernels import fused_linear_distill_loss

    from specdistill.losses import distill_loss

    g = torch.Generator().manual_seed(0)
    h = torch.randn(300, 256, generator=g, dtype=torch.float64)
    w = torch.randn(VOCAB, 256, generator=g, dtype=torch.float64) * 0.06
    t = torch.randn(300, VOCAB, generator=g, dtype=torch.float64) * 2
    h_in = h.to(torch.bfloat16).cuda().requires_grad_()
    w_in = w.to(torch.bfloat16).cuda().requires_grad_()
    loss = fused_linear_distill_loss(h_in, w_in, t.to(torch.bfloat16).cuda(), divergence=divergence,
                                     temperature=2.0, chunk_size=128)
    loss.backward()
    h_ref = h_in.detach().double().cpu().requires_grad_()
    w_ref = w_in.detach().double().cpu().requires_grad_()
    t_ref = t.to(torch.bfloat16).double()
    ref = distill_loss(h_ref @ w_ref.t(), t_ref, divergence=divergence, temperature=2.0)
    ref.backward()
    # bf16 logits from a bf16 matmul: compare at bf16 precision.
    assert_close_scaled(loss, ref, 1e-2, "loss")
    assert_close_scaled(h_in.grad, h_ref.grad, 3e-2, "grad hidden")
    assert_close_scaled(w_in.grad, w_ref.grad, 3e-2, "grad weight")


def test_sparse_teacher_large_vocab():
    from specdistill.kernels import fused_sparse_distill_loss

    from specdistill.losses import sparse_distill_loss

    s, t = logits(6, VOCAB, seed=2)
    lp, idx = torch.log_softmax(t / 2.0, -1).topk(64, -1)
    s_in = s.to(torch.bfloat16).cuda().requires_grad_()
    loss = fused_sparse_distill_loss(s_in, lp.float().cuda(), idx.cuda(), divergence="rkl", temperature=2.0)
    loss.backward()
    s_ref = s_in.detach().double().cpu().requires_grad_()
    ref = sparse_distill_loss(s_ref, lp.float().double(), idx, divergence="rkl", temperature=2.0)
    ref.backward()
    assert_close_scaled(loss, ref, 2e-5, "loss")
    assert_close_scaled(s_in.grad, s_ref.grad, 1e-2, "grad")
