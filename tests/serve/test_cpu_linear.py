"""The CPU linears: the bf16 kernel for CPUs without bf16 instructions and oneDNN-packed weights,
each as exact as PyTorch's own linear against float64, and greedy decoding through them stays the
target's own."""

import pytest
import torch
import torch.nn.functional as F
from serve_helpers import hf_greedy
from specdistill.serve import SpeculativeGenerator, cpu_linear, packed_linear

from specdistill.models import tiny_llama
from specdistill.models.loading import native_bf16

KERNEL = cpu_linear.wanted(torch.zeros(1, dtype=torch.bfloat16))
PACKING = packed_linear.available(torch.zeros(1))
needs_kernel = pytest.mark.skipif(not KERNEL,
                                  reason="the kernel serves x86 CPUs with AVX2 and without bf16 instructions")
needs_packing = pytest.mark.skipif(not PACKING, reason="this PyTorch build has no oneDNN linear ops")
# CPUs with bf16 instructions build the kernel too: cpu_layer's one-call layers multiply 1-3 tokens through it.
BUILT = cpu_linear.builds_for(torch.zeros(1, dtype=torch.bfloat16))
needs_build = pytest.mark.skipif(not BUILT, reason="the kernel builds on x86 CPUs with AVX2 and a compiler")

TOKENS = [1, 2, 5, 6, 7, 13, 24, 25, 64, 70]  # both sides of the kernel's 6-row blocks and of KERNEL_MAX_TOKENS
SHAPES = [(96, 64), (33, 40), (7, 19)]  # odd rows, and widths off the 8-lane grid


def case(tokens, shape, dtype):
    generator = torch.Generator().manual_seed(tokens)
    weight = torch.randn(shape, generator=generator).to(dtype)
    x = torch.randn(2, tokens, shape[1], generator=generator).to(dtype)
    bias = torch.randn(shape[0], generator=generator).to(dtype)
    return weight, x, bias, F.linear(x.double(), weight.double(), bias.double())


@needs_kernel
@pytest.mark.parametrize("tokens", TOKENS)
@pytest.mark.parametrize("shape", SHAPES)
def test_the_bf16_linears_are_as_close_to_float64_as_pytorch_bf16(tokens, shape):
    weight, x, bias, exact = case(tokens, shape, torch.bfloat16)
    ulp = exact.abs().clamp(min=1e-3) * 2 ** -7  # one bf16 step at each output's size
    outputs = [cpu_linear.linear(x, weight, bias), cpu_linear.bf16_linear(x, weight, bias)]
    if PACKING:
        outputs.append(cpu_linear.bf16_packed_linear(x, packed_linear.pack(weight), bias))
    for out in outputs:
        assert out.dtype == torch.bfloat16 and out.shape == exact.shape
        assert ((out.double() - exact).abs() <= ulp).all()
    assert ((F.linear(x, weight, bias).double() - exact).abs() <= ulp).all()  # the bound PyTorch meets too


@needs_build
@pytest.mark.parametrize("rows", range(1, 8))
@pytest.mark.parametrize("shape", [(38, 48), (96, 64), (7, 19)])
def test_each_of_the_kernels_row_blockings_is_as_close_to_float64_as_pytorch_bf16(rows, shape):
    # 2 and 3 rows take the 4-row blocks (38 = 9 blocks and 2 rows left over), other counts the pairs.
    weight, x, bias, _ = case(rows, shape, torch.bfloat16)
    x = x[0]
    exact = F.linear(x.double(), weight.double(), bias.double())
    out = cpu_linear._kernel.linear_bf16(x, weight, bias)
    assert ((out.double() - exact).abs() <= exact.abs().clamp(min=1e-3) * 2 ** -7).all()


@needs_build
@pytest.mark.parametrize("tokens", [1, 7, 24])
def test_the_kernel_rounds_its_bf16_output_as_pytorch_rounds_its_fp32_one(tokens):
    weight, x, bias, _ = case(tokens, (33, 40), torch.bfloat16)
    rows = x.reshape(-1, 40)
    for with_bias in (None, bias):
        in_fp32 = cpu_linear._kernel.linear_bf16(rows.float(), weight, with_bias)
        in_bf16 = cpu_linear._kernel.linear_bf16(rows, weight, with_bias)
        assert in_fp32.dtype == torch.float32 and in_bf16.dtype == torch.bfloat16
        assert torch.equal(in_fp32.to(torch.bfloat16), in_bf16)  # round to nearest even, bit for bit
    specials = torch.tensor([[float("nan")] + [0.0] * 7, [1e38] * 8]).bfloat16()
    out = cpu_linear._kernel.linear_bf16(specials, torch.ones(3, 8).bfloat16(), None)
    assert out[0].isnan().all() and out[1].isposinf().all()


@needs_packing
@pytest.mark.parametrize("tokens", [1, 5, 16, 70])
@pytest.mark.parametrize("shape", SHAPES)
def test_packed_fp32_linears_are_as_close_to_float64_as_f_linear(tokens, shape):
    weight, x, bias, exact = case(tokens, shape, torch.float32)
    out = packed_linear.packed_linear(x, packed_linear.pack(weight), bias)
    assert out.dtype == torch.float32 and out.shape == exact.shape
    bound = 4 * (F.linear(x, weight, bias).double() - exact).abs().max() + 1e-6
    assert (out.double() - exact).abs().max() <= bound


@needs_packing
def test_a_pack_is_made_once_per_weight_and_anew_after_an_in_place_change():
    weight = torch.randn(24, 16)
    first = packed_linear.pack(weight)
    assert packed_linear.pack(weight) is first
    with torch.no_grad():
        weight.mul_(2)
    again = packed_linear.pack(weight)
    assert again is not first
    x = torch.randn(3, 16)
    torch.testing.assert_close(packed_linear.packed_linear(x, again), F.linear(x, weight))


@needs_packing
@pytest.mark.skipif(not native_bf16("cpu"), reason="oneDNN's bf16 linear serves CPUs with bf16 instructions")
@pytest.mark.parametrize("tokens", [1, 5, 11, 40])
def test_bf16_weights_packed_for_onednn_give_pytorchs_bf16_linear_exactly(tokens):
    weight, x, bias, _ = case(tokens, (96, 64), torch.bfloat16)
    packed = packed_linear.PackedBf16Weight(weight)
    assert torch.equal(packed_linear.packed_bf16_linear(x, packed, bias), F.linear(x, weight, bias))
    assert torch.equal(packed_linear.packed_bf16_linear(x, packed), F.linear(x, weight))


@needs_packing
def test_packed_linears_under_autograd_are_f_linear():
    weight = torch.randn(8, 5, requires_grad=True)
    x = torch.randn(4, 5)
    packed_linear.packed_linear(x, packed_linear.pack(weight)).sum().backward()
    torch.testing.assert_close(weight.grad, x.sum(0).expand(8, 5))


@needs_packing
def test_turned_off_by_the_environment(monkeypatch):
    monkeypatch.setenv("SPECDISTILL_PACKED_LINEARS", "0")
    assert not packed_linear.available(torch.zeros(1))
    gen = SpeculativeGenerator(tiny_llama(vocab_size=32, num_layers=2, hidden_size=64, seed=1), "ngram")
    assert gen.target_runner._linear is F.linear


@needs_packing
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_greedy_decoding_through_the_cpu_linears_equals_hf(dtype):
    target = tiny_llama(vocab_size=32, num_layers=3, hidden_size=64, seed=5).to(dtype)
    with torch.no_grad():
        target.lm_head.weight.mul_(8)  # sharp logits: no near-ties for rounding to flip
    # verifies 11 tokens (the kernel in bf16); the prefill of 87 goes past it, to the packed copies
    gen = SpeculativeGenerator(target, "ngram", num_draft_tokens=10)
    expected = cpu_linear.packed_linear if dtype == torch.float32 else cpu_linear.bf16_packed_linear
    if dtype == torch.bfloat16 and not KERNEL:  # bf16 instructions: oneDNN's bf16 linear over packed weights
        expected = packed_linear.packed_bf16_linear if native_bf16("cpu") else F.linear
    assert gen.target_runner._linear is expected
    prompts = [torch.tensor([[3, 9, 4, 3, 9, 4, 3]]), torch.arange(2, 90).view(1, -1) % 32]  # a prefill of 87
    for ids in prompts:
        torch.testing.assert_close(gen.generate(ids, 24, eos_token_id=[]).sequences, hf_greedy(target, ids, 24))


@needs_kernel
def test_without_packing_bf16_goes_through_the_kernel(monkeypatch):
    monkeypatch.setenv("SPECDISTILL_PACKED_LINEARS", "0")
    gen = SpeculativeGenerator(tiny_llama(vocab_size=32, num_layers=2, hidden_size=64).to(torch.bfloat16), "ngram")
    assert gen.target_runner._linear is cpu_linear.bf16_linear


@pytest.mark.skipif(not (KERNEL or PACKING), reason="F.linear is all this machine has")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_head_runs_its_linears_through_the_cpu_linears_sharing_its_weights(dtype):
    head = torch.nn.Sequential(torch.nn.Linear(16, 24), torch.nn.ReLU(), torch.nn.Linear(24, 8, bias=False))
    head = head.to(dtype)
    routed = cpu_linear.with_kernel_linears(head)
    if routed is head:  # fp32 without packing, or bf16 without the kernel
        assert (dtype == torch.float32 and not PACKING) or (dtype == torch.bfloat16 and not KERNEL)
        return
    assert isinstance(routed[0], cpu_linear.PreparedLinear) and isinstance(head[0], torch.nn.Linear)  # a copy
    assert routed[2].weight is head[2].weight  # the same parameters
    x = torch.randn(5, 16).to(dtype)
    tolerance = 0.02 if dtype == torch.bfloat16 else 1e-5
    torch.testing.assert_close(routed(x), head(x), atol=tolerance, rtol=tolerance)
