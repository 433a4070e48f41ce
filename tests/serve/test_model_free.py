"""Model-free drafters (prompt lookup, n-gram): what they draft, and that the engine stays
lossless with them, greedy and sampled, one row or a batch."""

import pytest
import torch
from serve_helpers import assert_follows, exact_joint, hf_greedy, sampled_pairs
from specdistill.serve import SpeculativeGenerator
from specdistill.serve.model_free import ModelFreeDrafter, RetrievalBranch, continuation
from transformers import LogitsProcessorList, TemperatureLogitsWarper

from specdistill.models import tiny_llama


def test_lookups_find_thecontinuation_of_the_last_ngram():
    tokens = [5, 6, 7, 5, 6, 8, 5, 6]
    assert continuation(tokens, len(tokens), range(2, 0, -1), 2, most_recent=True) == [8, 5]
    assert continuation(tokens, len(tokens), range(2, 0, -1), 2, most_recent=False) == [7, 5]
    assert continuation(tokens, 3, range(2, 0, -1), 4, most_recent=False) == [7, 5, 6, 8]  # prompt [5, 6, 7]
    assert continuation([1, 2, 3], 3, range(2, 0, -1), 3, most_recent=False) == []
    lookup, ngram = ModelFreeDrafter("prompt-lookup", 10), ModelFreeDrafter("ngram", 10)
    # The repeat of [1, 2] is in the generated text only: n-gram finds it, prompt lookup does not.
    assert lookup.drafts_for(3, [4, 5, 6, 1, 2, 9, 1, 2], 3) == []
    assert ngram.drafts_for(3, [4, 5, 6, 1, 2, 9, 1, 2], 3) == [9, 1, 2]
    with pytest.raises(ValueError, match="unknown model-free drafter"):
        ModelFreeDrafter("eagle", 10)


@pytest.fixture(scope="module")
def sharp_target():
    target = tiny_llama(vocab_size=16, num_layers=3, hidden_size=32, seed=3)
    with torch.no_grad():  # sharpen the random model so it repeats itself and drafts get accepted
        target.lm_head.weight.mul_(6)
    return target


@pytest.mark.parametrize("method", ["prompt-lookup", "ngram"])
def test_greedy_output_is_the_target_own_one_row_or_batched(sharp_target, method):
    # A prompt that holds the target's own continuation of its last tokens, so lookups pay.
    base = torch.tensor([[2, 5, 3]])
    seen = hf_greedy(sharp_target, base, 12)
    prompts = [torch.cat([seen, base], 1), torch.tensor([[7, 1, 7, 1, 7]]), torch.tensor([[4]])]
    gen = SpeculativeGenerator(sharp_target, method, num_draft_tokens=3)
    outs = gen.generate_batch(prompts, max_new_tokens=24, eos_token_id=[])
    for ids, out in zip(prompts, outs):
        torch.testing.assert_close(out.sequences, hf_greedy(sharp_target, ids, 24))
    merged = outs[0].stats.merge(outs[1].stats)
    assert merged.proposed > 0 and merged.accepted > 0  # it drafted, and the target agreed at times


@pytest.mark.parametrize("method", ["prompt-lookup", "ngram"])
def test_sampled_output_follows_the_target_distribution(sharp_target, method):
    vocab, samples = 16, 1500
    prompt = torch.tensor([[2, 5, 3, 2, 5]])  # the last 2-gram recurs: drafts are [3, 2]
    expected = exact_joint(sharp_target, prompt, vocab, LogitsProcessorList([TemperatureLogitsWarper(1.0)]))
    gen = SpeculativeGenerator(sharp_target, method, num_draft_tokens=2)
    counts, stats = sampled_pairs(gen, prompt, vocab, samples)
    assert stats.proposed > 0 and 0 < stats.alpha < 1  # drafts made, some accepted and some rejected
    assert_follows(counts, expected)


def test_a_match_overlapping_the_tail_continues_the_repeat():
    # The latest [1, 2] starts two tokens before the end: the copy reads its own output past it.
    assert continuation([9, 1, 2, 1, 2], 5, range(2, 1, -1), 5, most_recent=True) == [1, 2, 1, 2, 1]
    assert continuation([3, 3, 3], 3, range(2, 1, -1), 4, most_recent=True) == [3, 3, 3, 3]


def test_retrieval_branch_specs():
    assert RetrievalBranch.parse("ngram") == RetrievalBranch("ngram", 8)
    assert RetrievalBranch.parse(" prompt-lookup:12 ") == RetrievalBranch("prompt-lookup", 12)
    assert RetrievalBranch.parse("none") is None and RetrievalBranch.parse(None) is None
    assert str(RetrievalBranch("ngram", 5)) == "ngram:5"
    for bad, message in (("suffix", "unknown retrieval method"), ("ngram:0", "max_tokens >= 1"), ("ngram:", "METHOD")):
        with pytest.raises(ValueError, match=message):
            RetrievalBranch.parse(bad)
