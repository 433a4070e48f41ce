"""Both runners (lean Llama path and generic HF path): same logits as the HF model, same
greedy output as target.generate, batch > 1 equal to single rows, clear errors."""

import pytest
import torch
from specdistill.serve import SpeculativeGenerator
from specdistill.serve.llama_fast import LlamaRunner
from specdistill.serve.runners import HFRunner, make_runner
from transformers import AutoModelForCausalLM, GPT2Config, MistralConfig, Qwen2Config

from specdistill.models import prune_draft, tiny_llama

SMALL = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2,
             max_position_embeddings=128, eos_token_id=1, pad_token_id=1)


def _model(config):
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()


def _architectures():
    return {
        "llama": tiny_llama(num_layers=3),
        # A window of 5 positions is crossed many times within these tests.
        "mistral": _model(MistralConfig(num_hidden_layers=3, sliding_window=5, **SMALL)),
        "qwen2": _model(Qwen2Config(num_hidden_layers=3, **SMALL)),  # q/k/v biases
    }


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2"])
@pytest.mark.parametrize("runner_class", [LlamaRunner, HFRunner])
def test_runner_logits_equal_the_model_with_ragged_rows(arch, runner_class):
    model = _architectures()[arch]
    ids = torch.randint(2, 64, (2, 14))
    reference = model(ids).logits
    runner = runner_class(model)
    if arch == "mistral" and runner_class is HFRunner:
        with pytest.raises(ValueError, match="sliding-window"):
            runner.start(2, 16)
        return
    state = runner.start(2, 16)  # too small on purpose: the fast cache must grow
    first = runner.forward(state, ids[:, :9], None)
    second = runner.forward(state, ids[:, 9:12], None)
    torch.testing.assert_close(torch.cat([first, second], 1), reference[:, :12], atol=1e-5, rtol=1e-5)
    runner.rollback(state, [12, 10])  # row 1 loses two tokens, then both rows go on
    refed = torch.stack([ids[0, 12:14], ids[1, 10:12]])
    out = runner.forward(state, refed, [1, 0])  # [B, V] at a position per row
    torch.testing.assert_close(out[0], reference[0, 13], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[1], reference[1, 10], atol=1e-5, rtol=1e-5)
    runner.select(state, [1])
    assert state.lengths == [12]
    torch.testing.assert_close(runner.forward(state, ids[1:, 12:13], [0])[0], reference[1, 12], atol=1e-5,
                               rtol=1e-5)


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2"])
@pytest.mark.parametrize("fast_path", [True, False])
def test_batch_greedy_equals_generate_on_both_paths(arch, fast_path):
    target = _architectures()[arch]
    draft = prune_draft(target, [0])
    prompts = [torch.randint(2, 64, (1, n)) for n in (1, 7, 4, 12)]
    gen = SpeculativeGenerator(target, draft, num_draft_tokens=3, fast_path=fast_path, draft_confidence=0.2)
    assert gen.target_runner.name == ("fast" if fast_path else "hf")
    if arch == "mistral" and not fast_path:
        prompts = prompts[1:2]  # one row: a batch would be refused (sliding window)
    outs = gen.generate_batch(prompts, max_new_tokens=20, eos_token_id=[])
    for ids, out in zip(prompts, outs):
        expected = target.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=20, min_new_tokens=20,
                                   do_sample=False, eos_token_id=None, pad_token_id=1)
        assert out.sequences.tolist() == expected.tolist()
        assert out.stats.new_tokens == 20


def test_rows_finish_at_their_own_eos_and_leave_the_batch(tiny_models):
    target, draft = tiny_models
    prompts = [torch.randint(2, 64, (1, n)) for n in (3, 9, 5)]
    free = SpeculativeGenerator(target, draft, num_draft_tokens=4).generate_batch(prompts, max_new_tokens=12,
                                                                                 eos_token_id=[])
    # Each row's 4th new token becomes its EOS: rows end at different steps.
    eos = [out.sequences[0, ids.shape[1] + 3].item() for ids, out in zip(prompts, free)]
    for fast_path in (True, False):
        gen = SpeculativeGenerator(target, draft, num_draft_tokens=4, fast_path=fast_path)
        for ids, out, token in zip(prompts, free, eos):
            single = gen.generate(ids, max_new_tokens=12, eos_token_id=token)
            first = out.sequences[0, ids.shape[1]:].tolist().index(token)
            assert single.sequences[0, ids.shape[1]:].tolist() == out.sequences[0, ids.shape[1]:][:first + 1].tolist()
            assert single.finish_reason == "eos"


def test_non_llama_models_take_the_generic_path_in_batches():
    config = GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=4, n_positions=128, eos_token_id=1,
                        bos_token_id=0)
    target = _model(config)
    draft = _model(GPT2Config(vocab_size=64, n_embd=32, n_layer=1, n_head=4, n_positions=128, eos_token_id=1,
                              bos_token_id=0))
    gen = SpeculativeGenerator(target, draft, num_draft_tokens=3)
    assert gen.target_runner.name == "hf"
    prompts = [torch.randint(2, 64, (1, n)) for n in (2, 8)]
    for ids, out in zip(prompts, gen.generate_batch(prompts, max_new_tokens=15, eos_token_id=[])):
        single = gen.generate(ids, max_new_tokens=15, eos_token_id=[])
        assert out.sequences.tolist() == single.sequences.tolist()
    with pytest.raises(ValueError, match="fast_path=True"):
        make_runner(target, fast_path=True)
    with pytest.raises(ValueError, match="compile=True needs the fast path"):
        make_runner(target, fast_path="auto", compile=True)
    with pytest.raises(ValueError, match="fast_path must be"):
        make_runner(target, fast_path="yes")


def test_fast_path_shares_the_weights_and_keeps_the_model_working():
    model = tiny_llama(num_layers=2)
    ids = torch.randint(2, 64, (1, 6))
    before = model(ids).logits
    stored = _stored_bytes(model)
    LlamaRunner(model)
    LlamaRunner(model)  # a second runner reuses the fused views
    torch.testing.assert_close(model(ids).logits, before)
    layer = model.model.layers[0].self_attn
    assert layer.q_proj.weight.untyped_storage().data_ptr() == layer.v_proj.weight.untyped_storage().data_ptr()
    assert _stored_bytes(model) == stored  # fused, not copied


def _stored_bytes(model) -> int:
    storages = {p.untyped_storage().data_ptr(): p.untyped_storage().nbytes() for p in model.parameters()}
    return sum(storages.values())


def test_compiled_fast_path_gives_the_same_tokens(tiny_models):
    """torch.compile (dynamic shapes) on the lean runner: same batch output as eager."""
    target, draft = tiny_models
    prompts = [torch.randint(2, 64, (1, n)) for n in (3, 8)]
    eager = SpeculativeGenerator(target, draft, num_draft_tokens=3).generate_batch(prompts, max_new_tokens=12,
                                                                                  eos_token_id=[])
    compiled = SpeculativeGenerator(target, draft, num_draft_tokens=3, compile=True)
    outs = compiled.generate_batch(prompts, max_new_tokens=12, eos_token_id=[])
    assert [o.sequences.tolist() for o in outs] == [o.sequences.tolist() for o in eager]


def test_vocab_subset_runs_the_head_on_those_rows_only(tiny_models):
    target, draft = tiny_models
    ids = torch.randint(2, 64, (2, 5))
    subset = torch.tensor([5, 1, 40, 33, 2])
    runner = LlamaRunner(draft, vocab_subset=subset)
    assert runner.head.shape[0] == 5
    logits = runner.forward(runner.start(2, 8), ids, None)
    full = draft(ids).logits
    torch.testing.assert_close(logits[..., subset], full[..., subset], atol=1e-5, rtol=1e-5)
    others = torch.ones(64, dtype=torch.bool)
    others[subset] = False
    assert torch.isneginf(logits[..., others]).all()
    # Lossless: greedy output is still the target's.
    prompt = torch.randint(2, 64, (1, 6))
    gen = SpeculativeGenerator(target, draft, num_draft_tokens=3, draft_vocab=torch.arange(2, 40))
    reference = SpeculativeGenerator(target, None).generate(prompt, max_new_tokens=20, eos_token_id=[])
    assert gen.generate(prompt, max_new_tokens=20, eos_token_id=[]).sequences.tolist() == reference.sequences.tolist()
    for bad in ([], [3, 3], [64]):
        with pytest.raises(ValueError, match="vocab_subset"):
            LlamaRunner(draft, vocab_subset=bad)
    with pytest.raises(ValueError, match="subset needs the fast path"):
        SpeculativeGenerator(target, draft, fast_path=False, draft_vocab=[1, 2])


def _fed_state(runner, prefixes: list[torch.Tensor], capacity: int):
    """A new state holding each prefix as a row (right-padded, the padding rolled back)."""
    state = runner.start(len(prefixes), capacity)
    width = max(len(p) for p in prefixes)
    runner.forward(state, torch.stack([torch.nn.functional.pad(p, (0, width - len(p))) for p in prefixes]), None)
    runner.rollback(state, [len(p) for p in prefixes])
    return state


@pytest.mark.parametrize("runner_class", [LlamaRunner, HFRunner])
def test_rows_joining_and_leaving_in_any_order_keep_their_caches(runner_class):
    """Admissions (into a batch with room, then past its capacity and its length) and departures
    (a prefix kept, rows moved forward, rows reordered) leave each row's logits as the model's."""
    model = tiny_llama(num_layers=3)
    torch.manual_seed(1)
    ids = torch.randint(2, 64, (6, 40))
    reference = model(ids).logits
    lengths = [7, 11, 20, 5, 3, 9]
    runner = runner_class(model)
    state = _fed_state(runner, [ids[0, :7], ids[1, :11]], capacity=16)
    rows = [0, 1]
    for joining, capacity, keep in (([2], 40, [2, 0]), ([3, 4], 8, [0, 2, 3]), ([5], 12, [3, 1, 0])):
        runner.extend(state, _fed_state(runner, [ids[r, : lengths[r]] for r in joining], capacity))
        rows += joining
        runner.select(state, keep)
        rows = [rows[i] for i in keep]
        assert state.lengths == [lengths[r] for r in rows]
        step = torch.stack([ids[r, lengths[r]: lengths[r] + 1] for r in rows])
        out = runner.forward(state, step, [0] * len(rows))
        for i, r in enumerate(rows):
            torch.testing.assert_close(out[i], reference[r, lengths[r]], atol=1e-5, rtol=1e-5)
            lengths[r] += 1


def test_leaving_rows_are_filled_from_the_end():
    from specdistill.serve.kv_rows import fewest_moves

    assert fewest_moves([0, 1, 2]) == [0, 1, 2]  # a prefix: nothing moves
    assert fewest_moves([1, 2, 3, 4]) == [4, 1, 2, 3]  # row 0 left: the last row takes its slot
    assert fewest_moves([0, 2, 5, 7]) == [0, 5, 2, 7]
    assert fewest_moves([]) == []
