"""The layers of a bf16 step in one C++ call (``cpu_layer``): the eager path's logits and caches for
every way a step attends (a short prefill, rows at their own lengths, a draft tree, a sliding window,
q/k/v biases), as close to float64 as the eager bf16 path, and used only where it serves."""

import copy

import pytest
import torch
from serve_helpers import sharp_tiny_target, tiny_head
from specdistill.serve import SpeculativeGenerator, cpu_layer, cpu_linear
from specdistill.serve.eagle_runner import EagleRunner
from specdistill.serve.llama_fast import LlamaRunner
from transformers import AutoModelForCausalLM, MistralConfig, Qwen2Config

from specdistill.models import tiny_llama

KERNEL = cpu_linear.builds_for(torch.zeros(1, dtype=torch.bfloat16))
pytestmark = pytest.mark.skipif(not KERNEL, reason="the C++ layer serves x86 CPUs with AVX2 and a compiler")

SMALL = dict(vocab_size=64, hidden_size=48, intermediate_size=80, num_attention_heads=4, num_key_value_heads=2,
             max_position_embeddings=128)


def _model(arch):
    if arch == "llama":
        return tiny_llama(num_layers=3, hidden_size=48, seed=3)
    torch.manual_seed(3)
    config = MistralConfig(num_hidden_layers=3, sliding_window=5, **SMALL) if arch == "mistral" else \
        Qwen2Config(num_hidden_layers=3, **SMALL)  # q/k/v biases
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()


def _steps(runner, ids):
    """The logits of each kind of step a decoding makes, and the keys the caches hold after them."""
    state = runner.start(2, 24)
    logits = [runner.forward(state, ids[:, :6], None)]  # a prefill from an empty cache (causal)
    logits.append(runner.forward(state, ids[:, 6:9], None))  # both rows from the same slot
    runner.rollback(state, [9, 7])
    logits.append(runner.forward(state, ids[:, 9:11], None))  # each row from its own length
    if not runner.sliding_window:  # a tree attends the whole cache
        runner.rollback(state, [11, 8])
        depths = torch.tensor([[0, 1, 1, 2]] * 2)  # a root, two children, a grandchild under the first
        ancestors = torch.tensor([[1, 0, 0, 0], [1, 1, 0, 0], [1, 0, 1, 0], [1, 1, 0, 1]], dtype=torch.bool)
        logits.append(runner.forward_tree(state, ids[:, 11:15], depths, ancestors.expand(2, 4, 4)))
    keys = [k[:, :, :15].clone() for k in state.keys] + [v[:, :, :15].clone() for v in state.values]
    return [out.double() for out in logits], keys


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2"])
@pytest.mark.parametrize("linears, caches", [("as chosen", None), ("kernel only", None), ("PyTorch's only", None),
                                             ("as chosen", torch.float32), ("as chosen", torch.bfloat16)])
def test_the_cpp_layers_give_the_eager_steps_and_are_as_close_to_float64(arch, linears, caches, monkeypatch):
    if linears != "as chosen":  # each way the layers multiply, on any CPU that builds them
        monkeypatch.setattr(cpu_layer, "_aten", lambda: cpu_layer.NEVER if linears == "kernel only" else 1)
    model = _model(arch)
    exact = LlamaRunner(copy.deepcopy(model).double())
    model = model.to(torch.bfloat16)
    in_cpp, eager = LlamaRunner(model), LlamaRunner(model)
    eager._layers_in_cpp = False  # the eager ops over caches of the same dtype
    for runner in (in_cpp, eager):  # each dtype of cache on any CPU (None: this CPU's own)
        runner.cache_dtype = caches or runner.cache_dtype
    assert in_cpp._layers_in_cpp
    ids = torch.randint(2, 64, (2, 15), generator=torch.Generator().manual_seed(1))
    (cpp_logits, cpp_cache), (eager_logits, eager_cache), (exact_logits, _) = (
        _steps(runner, ids) for runner in (in_cpp, eager, exact))
    for cpp, ours, reference in zip(cpp_logits, eager_logits, exact_logits):
        torch.testing.assert_close(cpp, ours, atol=0.03, rtol=0.03)
        cpp_error, eager_error = (cpp - reference).abs().mean(), (ours - reference).abs().mean()
        assert cpp_error <= 1.25 * eager_error + 1e-3, (cpp_error, eager_error)
    for cpp, ours in zip(cpp_cache, eager_cache):  # keys (rotated) and values, at the slots each step chose
        torch.testing.assert_close(cpp, ours, atol=0.02, rtol=0.02)


def test_the_cpp_layers_serve_bf16_steps_of_a_few_tokens_only():
    target = tiny_llama(vocab_size=32, num_layers=2, hidden_size=64)
    assert not LlamaRunner(target)._layers_in_cpp  # fp32: oneDNN's packed linears
    bf16 = target.to(torch.bfloat16)
    assert not LlamaRunner(bf16, compile=True)._layers_in_cpp
    runner = LlamaRunner(bf16)
    state = runner.start(1, 64)
    positions = torch.arange(cpu_linear.KERNEL_MAX_TOKENS + 1)[None]
    assert runner._slots_in_cpp(positions, 0, state.keys) is None  # a long prefill stays on the eager path
    assert runner._slots_in_cpp(positions[:, :4] + 7, None, state.keys).tolist() == [[7, 8, 9, 10]]
    assert runner._slots_in_cpp(positions[:, :3] + 9, 5, state.keys).tolist() == [[5, 6, 7]]  # a tree's slots


def test_greedy_decoding_through_the_cpp_layers_equals_hf():
    target = tiny_llama(vocab_size=32, num_layers=3, hidden_size=64, seed=5).to(torch.bfloat16)
    with torch.no_grad():
        target.lm_head.weight.mul_(8)  # sharp logits: no near-ties for rounding to flip
    gen = SpeculativeGenerator(target, "ngram", num_draft_tokens=4)
    assert gen.target_runner._layers_in_cpp
    ids = torch.tensor([[3, 9, 4, 3, 9, 4, 3]])
    expected = target.generate(ids, max_new_tokens=24, do_sample=False, eos_token_id=None, pad_token_id=0)
    torch.testing.assert_close(gen.generate(ids, 24, eos_token_id=[]).sequences, expected)


def _drafts(runner, features, ids):
    """A head's logits along a block drafted after the target verified 4 positions, then a tree level."""
    state = runner.start(1, 16)
    runner.take_features(state, features[:, :5].to(runner.head.fc.weight.dtype), [5])
    logits = [runner.forward(state, ids[:, 1:6], [4])]
    for j in (6, 7):
        logits.append(runner.forward(state, ids[:, j: j + 1], [0]))
    parents = state.last[:, None].expand(1, 2, -1)
    states = runner.forward_tree(state, ids[:, 8:10], parents, depth=3, start=0,
                                 ancestors=torch.eye(2, dtype=torch.bool)[None])
    draft_ids = runner.head.draft_ids
    return [out[..., draft_ids].double() for out in logits] + [runner.head.logits(states).double()]


def test_the_cpp_head_layer_drafts_as_the_eager_one_and_as_close_to_float64():
    target = sharp_tiny_target()
    head = tiny_head(target)
    ids = torch.tensor([[3, 7, 1, 9, 4, 12, 5, 8, 2, 6]])
    with torch.no_grad():
        hidden = target(input_ids=ids, output_hidden_states=True).hidden_states
        features = torch.cat([hidden[i] for i in head.layer_ids], -1)
        exact = EagleRunner(copy.deepcopy(head).double())
        in_cpp = EagleRunner(copy.deepcopy(head).to(torch.bfloat16))
        eager = EagleRunner(in_cpp.head)
        eager.cpp_weights = None  # the same fp32 caches, through the eager ops
        assert in_cpp.cpp_weights is not None and exact.cpp_weights is None
        results = [_drafts(runner, features.double() if runner is exact else features, ids)
                   for runner in (in_cpp, eager, exact)]
    for cpp, ours, reference in zip(*results):
        torch.testing.assert_close(cpp, ours, atol=0.05, rtol=0.05)
        cpp_error, eager_error = (cpp - reference).abs().mean(), (ours - reference).abs().mean()
        assert cpp_error <= 1.25 * eager_error + 1e-3, (cpp_error, eager_error)
