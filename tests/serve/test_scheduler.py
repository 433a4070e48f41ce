"""The continuous-batching engine: requests join and leave between steps, rows with
different parameters share a step and each stays lossless, failures stay local."""

import pytest
import torch
from serve_helpers import assert_follows, exact_joint, hf_greedy
from specdistill.serve import SpeculativeGenerator
from specdistill.serve.policy import HeuristicDraftLength
from transformers import GPT2Config, GPT2LMHeadModel, MistralConfig, MistralForCausalLM

from specdistill.models import prune_draft, tiny_llama


def _run(engine, until=None):
    """Step until nothing is left (or ``until()`` is true); the requests seen, in order of finishing."""
    finished = []
    while engine.has_work() and not (until and until()):
        finished += [request for request, chunk in engine.step() if chunk.finish_reason]
    return finished


def _new(request):
    return request.tokens[len(request.prompt):]


@pytest.mark.parametrize("fast_path", [True, False])
def test_requests_join_between_steps_and_equal_their_single_output(tiny_models, fast_path):
    """Rows arrive while others run (one-token prompts included: an empty cache joins),
    with mixed greedy and sampled parameters; greedy rows equal target.generate."""
    target, draft = tiny_models
    gen = SpeculativeGenerator(target, draft, num_draft_tokens=3, fast_path=fast_path)
    engine = gen.engine(max_batch_size=3)
    prompts = [torch.randint(2, 64, (1, n)) for n in (5, 1, 9, 3, 1, 12)]
    budgets = [20, 7, 15, 25, 9, 11]
    requests = [engine.add(prompts[0], budgets[0], eos_token_id=[])]
    engine.step()
    engine.step()
    requests.append(engine.add(prompts[1], budgets[1], temperature=0.8, seed=1, eos_token_id=[]))
    engine.step()
    for i in range(2, 6):  # more than fit: the rest wait for rows to leave
        sampled = i % 2 == 1
        requests.append(engine.add(prompts[i], budgets[i], temperature=1.1 if sampled else 0.0, top_k=8 if sampled
                                   else 0, seed=i, eos_token_id=[]))
        assert len(engine.running) <= 3
    _run(engine)
    for ids, budget, request in zip(prompts, budgets, requests):
        assert request.finish_reason == "length" and len(_new(request)) == budget
        if request.params.greedy:
            assert request.tokens == hf_greedy(target, ids, budget)[0].tolist()


def test_sliding_window_on_the_generic_path_runs_one_row_at_a_time():
    config = MistralConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_attention_heads=4,
                           num_key_value_heads=2, num_hidden_layers=2, sliding_window=5, max_position_embeddings=128)
    torch.manual_seed(0)
    target = MistralForCausalLM(config).eval()
    engine = SpeculativeGenerator(target, prune_draft(target, [0]), num_draft_tokens=2,
                                  fast_path=False).engine(max_batch_size=8)
    assert engine.max_batch_size == 1
    prompts = [torch.randint(2, 64, (1, n)) for n in (4, 9)]
    requests = [engine.add(ids, 12, eos_token_id=[]) for ids in prompts]
    _run(engine)
    for ids, request in zip(prompts, requests):
        assert request.tokens == hf_greedy(target, ids, 12)[0].tolist()


def test_mixed_parameters_in_one_batch_each_follow_their_own_distribution():
    """Rows of one batch alternate between two sampling settings and greedy, and join as
    others leave (max_batch_size below the number of rows): each sampled setting's
    outputs follow its own exact distribution, each greedy row is the target's argmax."""
    from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper

    vocab, samples = 8, 1500
    target = tiny_llama(vocab_size=vocab, num_layers=3, hidden_size=32, seed=3)
    with torch.no_grad():
        target.lm_head.weight.mul_(8)
    prompt = torch.tensor([[2, 5, 3]])
    settings = [dict(temperature=1.0), dict(temperature=0.6, top_k=4), dict(temperature=0.0)]
    engine = SpeculativeGenerator(target, prune_draft(target, [0]), num_draft_tokens=2).engine(max_batch_size=256)
    requests = [engine.add(prompt, 2, seed=i, eos_token_id=[], **settings[i % 3]) for i in range(3 * samples)]
    _run(engine)
    warpers = [LogitsProcessorList([TemperatureLogitsWarper(1.0)]),
               LogitsProcessorList([TemperatureLogitsWarper(0.6), TopKLogitsWarper(4)])]
    for which, warper in enumerate(warpers):
        counts = torch.zeros(vocab * vocab, dtype=torch.float64)
        for request in requests[which::3]:
            x1, x2 = _new(request)
            counts[x1 * vocab + x2] += 1
        assert_follows(counts, exact_joint(target, prompt, vocab, warper))
    greedy = hf_greedy(target, prompt, 2)[0].tolist()
    assert all(request.tokens == greedy for request in requests[2::3])
    assert engine.stats.rejected and engine.stats.accepted  # both paths of the rule were taken


def test_a_seeded_row_does_not_depend_on_its_batch(tiny_models):
    target, draft = tiny_models
    gen = SpeculativeGenerator(target, draft, num_draft_tokens=3)
    ids = torch.randint(2, 64, (1, 6))
    alone = gen.generate(ids, max_new_tokens=20, temperature=0.9, seed=11, eos_token_id=[]).sequences.tolist()
    engine = gen.engine()
    others = [engine.add(torch.randint(2, 64, (1, n)), 20, temperature=1.3, eos_token_id=[]) for n in (3, 8)]
    request = engine.add(ids, 20, temperature=0.9, seed=11, eos_token_id=[])
    _run(engine)
    assert [request.tokens] == alone and all(o.finished for o in others)


def test_cancelled_rows_leave_at_once_and_the_rest_go_on(tiny_models):
    target, draft = tiny_models
    gen = SpeculativeGenerator(target, draft, num_draft_tokens=3)
    engine = gen.engine()
    prompts = [torch.randint(2, 64, (1, n)) for n in (4, 7, 2)]
    requests = [engine.add(ids, 30, eos_token_id=[]) for ids in prompts]
    waiting = engine.add(prompts[0], 30, eos_token_id=[])
    engine.cancel(waiting)  # cancelled before it ever ran
    engine.step()
    engine.cancel(requests[1])
    chunks = engine.step()
    assert (requests[1], "cancelled") in [(r, c.finish_reason) for r, c in chunks]
    assert waiting.finish_reason == "cancelled" and len(engine.running) == 2
    _run(engine)
    for i in (0, 2):
        assert requests[i].tokens == hf_greedy(target, prompts[i], 30)[0].tolist()


def test_an_exception_in_a_step_fails_only_that_steps_requests(tiny_models, monkeypatch):
    target, draft = tiny_models
    gen = SpeculativeGenerator(target, draft, num_draft_tokens=2)
    engine = gen.engine()
    first = engine.add(torch.randint(2, 64, (1, 5)), 10, eos_token_id=[])
    engine.step()
    real = gen.target_runner.forward
    monkeypatch.setattr(gen.target_runner, "forward", lambda *a: (_ for _ in ()).throw(RuntimeError("boom")))
    chunks = engine.step()
    assert first.finish_reason == "error" and "boom" in str(first.error) and chunks[0][1].finish_reason == "error"
    monkeypatch.setattr(gen.target_runner, "forward", real)
    ids = torch.randint(2, 64, (1, 4))
    second = engine.add(ids, 10, eos_token_id=[])
    _run(engine)
    assert second.tokens == hf_greedy(target, ids, 10)[0].tolist()


def test_batch_stats_count_each_shared_call_once(tiny_models):
    target, draft = tiny_models
    outs = SpeculativeGenerator(target, draft, num_draft_tokens=3).generate_batch(
        [torch.randint(2, 64, (1, n)) for n in (3, 6, 9)], max_new_tokens=12, eos_token_id=[])
    merged = outs[0].stats.merge(outs[1].stats).merge(outs[2].stats)
    steps = max(out.stats.steps for out in outs)  # rows run in lockstep here, all to the budget
    assert merged.target_calls == pytest.approx(steps, abs=1e-9)  # one verification per step, not three
    assert merged.steps == sum(out.stats.steps for out in outs)
    assert merged.tau == pytest.approx(36 / merged.steps)


def test_heuristic_policy_moves_once_per_step():
    policy = HeuristicDraftLength(initial=5)
    policy.update_rows([(5, 5), (5, 5), (5, 1)], 5, 0.0, 0.0)
    assert policy.k == 7  # most rows took every draft: +2 once, not +2 +2 -1
    policy.update_rows([(7, 7), (7, 2), (7, 0)], 7, 0.0, 0.0)
    assert policy.k == 6


def test_no_row_is_fed_past_the_context_in_a_batch():
    """GPT-2 has learned positions: a row fed past n_positions would index out of range.
    A row that ends at the context's last position shares steps with a short one."""
    config = GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=4, n_positions=32, eos_token_id=1,
                        bos_token_id=0)
    torch.manual_seed(0)
    target = GPT2LMHeadModel(config).eval()
    gen = SpeculativeGenerator(target, target, num_draft_tokens=6)  # every draft is accepted
    long_prompt, short_prompt = torch.randint(2, 64, (1, 24)), torch.randint(2, 64, (1, 3))
    outs = gen.generate_batch([long_prompt, short_prompt], max_new_tokens=8, eos_token_id=[])
    assert [out.sequences.shape[1] for out in outs] == [32, 11]
    assert outs[0].sequences.tolist() == hf_greedy(target, long_prompt, 8).tolist()


class _Schedule:
    """A draft-length policy that plays a fixed list of k, then the last one."""

    def __init__(self, ks):
        self.ks = list(ks)

    def next_k(self):
        return self.ks.pop(0) if len(self.ks) > 1 else self.ks[0]

    def update_rows(self, rows, k_run, draft_seconds, verify_seconds):
        pass


def test_a_lagging_draft_padding_never_indexes_past_learned_positions():
    """After k = 0 steps the draft lags; a row admitted near the end of the context is
    right-padded to the laggard's width. GPT-2's position table must not be read past its end."""
    config = GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=4, n_positions=32, eos_token_id=1,
                        bos_token_id=0)
    torch.manual_seed(0)
    target = GPT2LMHeadModel(config).eval()
    gen = SpeculativeGenerator(target, target, num_draft_tokens=_Schedule([0, 0, 0, 0, 0, 3]))
    engine = gen.engine()
    short = engine.add(torch.randint(2, 64, (1, 3)), 20, eos_token_id=[])
    for _ in range(5):
        engine.step()  # k = 0: the draft cache falls 5 tokens behind
    near_end = torch.randint(2, 64, (1, 28))
    late = engine.add(near_end, 4, eos_token_id=[])
    _run(engine)
    assert late.tokens == hf_greedy(target, near_end, 4)[0].tolist() and short.finish_reason == "length"
