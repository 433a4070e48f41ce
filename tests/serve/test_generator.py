"""SpeculativeGenerator: greedy output is the target's own, sampling follows the target exactly."""


import pytest
import torch
from serve_helpers import assert_follows, exact_joint, hf_greedy
from specdistill.serve import SpeculativeGenerator
from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from specdistill.models import prune_draft, tiny_llama


@pytest.mark.parametrize("k", [0, 1, 3, 6])
@pytest.mark.parametrize("prompt_len", [1, 5, 17])
def test_greedy_equals_target_generate(tiny_models, k, prompt_len):
    target, draft = tiny_models
    ids = torch.randint(2, 64, (1, prompt_len))
    out = SpeculativeGenerator(target, draft, num_draft_tokens=k).generate(ids, max_new_tokens=30, eos_token_id=[])
    assert out.sequences.tolist() == hf_greedy(target, ids, 30).tolist()
    assert out.stats.new_tokens == 30


@pytest.mark.parametrize("confidence", [0.05, 0.5])
def test_confidence_early_stop_stays_lossless_and_drafts_less(tiny_models, confidence):
    target, draft = tiny_models
    ids = torch.randint(2, 64, (1, 6))
    gen = SpeculativeGenerator(target, draft, num_draft_tokens=5, draft_confidence=confidence)
    out = gen.generate(ids, max_new_tokens=30, eos_token_id=[])
    assert out.sequences.tolist() == hf_greedy(target, ids, 30).tolist()
    assert out.stats.proposed < 5 * out.stats.target_calls  # some steps stopped drafting early
    with pytest.raises(ValueError, match="draft_confidence"):
        SpeculativeGenerator(target, draft, draft_confidence=1.0)


def test_draft_equal_to_target_accepts_everything(tiny_models):
    target, _ = tiny_models
    ids = torch.randint(2, 64, (1, 6))
    for temperature in (0.0, 1.0):
        stats = SpeculativeGenerator(target, target, num_draft_tokens=4).generate(
            ids, max_new_tokens=25, temperature=temperature, eos_token_id=[], seed=0).stats
        assert stats.alpha == 1.0 and stats.acceptance_rate == 1.0
        assert stats.tau == 5.0  # 25 tokens in 5 target calls


def test_stats_are_consistent(tiny_models):
    target, draft = tiny_models
    stats = SpeculativeGenerator(target, draft, num_draft_tokens=4).generate(
        torch.randint(2, 64, (1, 6)), max_new_tokens=40, eos_token_id=[]).stats
    assert stats.new_tokens == stats.accepted + stats.steps
    assert sum(stats.accept_length_hist) == stats.steps == stats.target_calls  # one row: every call is its own
    assert stats.accepted == sum(stats.accepted_at)
    assert stats.accepted + stats.rejected == sum(stats.reached_at)
    assert stats.prefill_seconds > 0 and stats.draft_seconds > 0 and stats.target_seconds > 0


def test_stops_at_eos(tiny_models):
    target, draft = tiny_models
    ids = torch.randint(2, 64, (1, 5))
    reference = hf_greedy(target, ids, 20)[0, 5:].tolist()
    eos = reference[7]
    out = SpeculativeGenerator(target, draft, num_draft_tokens=3).generate(ids, max_new_tokens=20, eos_token_id=eos)
    new = out.sequences[0, 5:].tolist()
    assert new == reference[: reference.index(eos) + 1]


def test_seed_reproduces_samples(tiny_models):
    target, draft = tiny_models
    gen = SpeculativeGenerator(target, draft, num_draft_tokens=3)
    ids = torch.randint(2, 64, (1, 5))
    a = gen.generate(ids, max_new_tokens=20, temperature=1.0, seed=7, eos_token_id=[]).sequences
    b = gen.generate(ids, max_new_tokens=20, temperature=1.0, seed=7, eos_token_id=[]).sequences
    assert torch.equal(a, b)


def test_clear_errors(tiny_models):
    target, draft = tiny_models
    gen = SpeculativeGenerator(target, draft)
    with pytest.raises(ValueError, match="vocabulary mismatch"):
        SpeculativeGenerator(target, tiny_llama(vocab_size=80))
    with pytest.raises(ValueError, match="temperature"):
        gen.generate(torch.tensor([[3, 4]]), temperature=-1)
    with pytest.raises(ValueError, match="top_p"):
        gen.generate(torch.tensor([[3, 4]]), temperature=1, top_p=0)
    with pytest.raises(ValueError, match="context"):
        gen.generate(torch.randint(2, 64, (1, 500)), max_new_tokens=20)
    with pytest.raises(ValueError, match="empty"):
        gen.generate(torch.zeros(1, 0, dtype=torch.long))



@pytest.mark.parametrize("temperature,top_k,top_p,draft_vocab",
                         [(1.0, 0, 1.0, None), (0.7, 5, 1.0, None), (1.3, 0, 0.8, None), (1.0, 0, 1.0, [7, 0, 3, 5])])
def test_sampling_follows_the_target_distribution(temperature, top_k, top_p, draft_vocab):
    vocab, samples = 8, 3000
    target = tiny_llama(vocab_size=vocab, num_layers=3, hidden_size=32, seed=3)
    with torch.no_grad():  # sharpen the random model so the distribution is far from uniform
        target.lm_head.weight.mul_(8)
    draft = prune_draft(target, [0])
    warpers = LogitsProcessorList([TemperatureLogitsWarper(temperature)])
    if top_k:
        warpers.append(TopKLogitsWarper(top_k))
    if top_p < 1:
        warpers.append(TopPLogitsWarper(top_p))
    prompt = torch.tensor([[2, 5, 3]])
    expected = exact_joint(target, prompt, vocab, warpers)
    # A confidence threshold shortens some drafts; the output distribution must not move.
    # A draft vocabulary subset makes q zero outside it; the output must not move either.
    gen = SpeculativeGenerator(target, draft, num_draft_tokens=2, draft_confidence=0.3 if top_p < 1 else 0.0,
                               draft_vocab=draft_vocab)
    counts = torch.zeros(vocab * vocab, dtype=torch.float64)
    stats = None
    for seed in range(samples):
        out = gen.generate(prompt, max_new_tokens=2, temperature=temperature, top_k=top_k, top_p=top_p,
                           seed=seed, eos_token_id=[])
        x1, x2 = out.sequences[0, 3:].tolist()
        counts[x1 * vocab + x2] += 1
        stats = out.stats if stats is None else stats.merge(out.stats)
    assert 0 < stats.alpha < 1  # the rejection path was exercised
    assert_follows(counts, expected)


@pytest.mark.parametrize("fast_path", [True, False])
def test_batched_sampling_follows_the_target_distribution_per_row(fast_path):
    """One batch of 2 x 1500 rows with two prompts of different lengths: rows accept
    different numbers of drafts each step, and each prompt's outputs must follow its
    own exact distribution."""
    vocab, samples = 8, 1500
    target = tiny_llama(vocab_size=vocab, num_layers=3, hidden_size=32, seed=3)
    with torch.no_grad():
        target.lm_head.weight.mul_(8)
    draft = prune_draft(target, [0])
    warpers = LogitsProcessorList([TemperatureLogitsWarper(0.9), TopPLogitsWarper(0.9)])
    prompts = [torch.tensor([[2, 5, 3]]), torch.tensor([[4, 4, 7, 1, 6, 2]])]
    gen = SpeculativeGenerator(target, draft, num_draft_tokens=2, fast_path=fast_path)
    outs = gen.generate_batch(prompts * samples, max_new_tokens=2, temperature=0.9, top_p=0.9, seed=0,
                              eos_token_id=[])
    for which, prompt in enumerate(prompts):
        counts = torch.zeros(vocab * vocab, dtype=torch.float64)
        for out in outs[which::2]:
            x1, x2 = out.sequences[0, prompt.shape[1]:].tolist()
            counts[x1 * vocab + x2] += 1
        assert_follows(counts, exact_joint(target, prompt, vocab, warpers))
    # Both paths of the rule were taken, and rows of one step accepted different numbers.
    assert any(out.stats.rejected for out in outs) and any(out.stats.accepted for out in outs)


def test_per_position_acceptance_counts_positions_never_accepted():
    from specdistill.serve import SpecStats

    stats = SpecStats()
    stats.record_step(3, 0)
    stats.record_step(3, 1)
    assert stats.per_position_acceptance() == [0.5, 0.0]
