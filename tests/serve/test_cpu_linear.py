"""The bf16 kernel for CPUs without bf16 instructions: as exact as PyTorch's bf16 linear, against
float64, and greedy decoding through it stays the target's own."""

import pytest
import torch
import torch.nn.functional as F
from serve_helpers import hf_greedy
from specdistill.serve import SpeculativeGenerator, cpu_linear

from specdistill.models import tiny_llama

pytestmark = pytest.mark.skipif(not cpu_linear.wanted(torch.zeros(1, dtype=torch.bfloat16)),
                                reason="the kernel serves x86 CPUs with AVX2 and without bf16 instructions")


@pytest.mark.parametrize("tokens", [1, 2, 5, 6, 7, 13, 64, 70])
@pytest.mark.parametrize("shape", [(96, 64), (33, 40), (7, 19)])  # odd rows, and widths off the 8-lane grid
def test_the_kernel_is_as_close_to_float64_as_pytorch_bf16(tokens, shape):
    generator = torch.Generator().manual_seed(tokens)
    weight = torch.randn(shape, generator=generator).bfloat16()
    x = torch.randn(2, tokens, shape[1], generator=generator).bfloat16()
    bias = torch.randn(shape[0], generator=generator).bfloat16()
    exact = F.linear(x.double(), weight.double(), bias.double())
    ulp = exact.abs().clamp(min=1e-3) * 2 ** -7  # one bf16 step at each output's size
    for fn in (cpu_linear.linear, cpu_linear.bf16_linear):
        out = fn(x, weight, bias)
        assert out.dtype == torch.bfloat16 and out.shape == exact.shape
        assert ((out.double() - exact).abs() <= ulp).all()
    assert ((F.linear(x, weight, bias).double() - exact).abs() <= ulp).all()  # the bound PyTorch meets too


def test_greedy_decoding_in_bf16_through_the_kernel_equals_hf():
    target = tiny_llama(vocab_size=32, num_layers=3, hidden_size=64, seed=5).to(torch.bfloat16)
    with torch.no_grad():
        target.lm_head.weight.mul_(8)  # sharp logits: no near-ties for rounding to flip
    gen = SpeculativeGenerator(target, "ngram", num_draft_tokens=6)
    assert gen.target_runner._linear is cpu_linear.bf16_linear
    prompts = [torch.tensor([[3, 9, 4, 3, 9, 4, 3]]), torch.arange(2, 90).view(1, -1) % 32]  # a prefill of 87
    for ids in prompts:
        torch.testing.assert_close(gen.generate(ids, 24, eos_token_id=[]).sequences, hf_greedy(target, ids, 24))


def test_a_head_runs_its_linears_through_the_kernel_sharing_its_weights():
    head = torch.nn.Sequential(torch.nn.Linear(16, 24), torch.nn.ReLU(), torch.nn.Linear(24, 8, bias=False))
    head = head.to(torch.bfloat16)
    routed = cpu_linear.with_kernel_linears(head)
    assert isinstance(routed[0], cpu_linear.KernelLinear) and isinstance(head[0], torch.nn.Linear)  # a copy
    assert routed[2].weight is head[2].weight  # no second set of weights
    x = torch.randn(5, 16).bfloat16()
    torch.testing.assert_close(routed(x), head(x), atol=0.02, rtol=0.02)
    assert cpu_linear.with_kernel_linears(head.float()) is head  # fp32: nothing to do
