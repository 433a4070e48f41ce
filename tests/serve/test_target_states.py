"""``capture_states`` (``serve --capture-features``): each request keeps the target's states at every
position it read, the same numbers the target gives over the whole sequence at once, whichever way
the engine stepped (prefill, chains, trees, batches, sampled rows)."""

import pytest
import torch
from specdistill.serve import SpeculativeGenerator

from specdistill.models.eagle3 import Eagle3Head

PROMPTS = [[2, 5, 3, 9], [7, 1, 7, 1, 7, 4, 4], [4, 11], [6, 2, 9, 9, 3, 1, 5, 8, 12]]


def _run(gen, capture: bool, **params):
    engine = gen.engine(max_batch_size=3)  # 4 prompts: one joins a running batch
    engine.capture_states = capture
    requests = [engine.add(torch.tensor([p]), max_new_tokens=15, eos_token_id=[], **params) for p in PROMPTS]
    while engine.has_work():
        engine.step()
    return requests


@torch.no_grad()
def _reference(target, head, tokens: list[int]) -> torch.Tensor:
    """The head's features and the final normed state, the target over the tokens it read in one pass."""
    hidden = target(input_ids=torch.tensor([tokens[:-1]]), output_hidden_states=True).hidden_states
    return torch.cat([hidden[i] for i in head.layer_ids] + [hidden[-1]], -1)[0]


@pytest.mark.parametrize("how", [{"num_draft_tokens": 3}, {"num_draft_tokens": 3, "fast_path": False},
                                 {"draft_tree": "3,3,8"}, {"num_draft_tokens": "auto", "draft_tree": "auto"}])
def test_each_request_keeps_the_target_states_of_every_position_it_read(target, head, how):
    gen = SpeculativeGenerator(target, head, **how)
    requests = _run(gen, capture=True)
    assert sum(r.stats.accepted for r in requests) > 0  # drafts were accepted: states came from verifications too
    for request in requests:
        states = torch.cat(request.target_states)
        assert states.shape == (len(request.tokens) - 1, 4 * 32)
        torch.testing.assert_close(states, _reference(target, head, request.tokens), atol=2e-5, rtol=1e-4)
    plain = _run(gen, capture=False)  # the output does not depend on capturing
    assert [r.tokens for r in plain] == [r.tokens for r in requests]
    assert all(r.target_states == [] for r in plain)


def test_sampled_requests_keep_their_states_too(target, head):
    requests = _run(SpeculativeGenerator(target, head, num_draft_tokens=3), capture=True, temperature=1.0, seed=5)
    for request in requests:
        torch.testing.assert_close(torch.cat(request.target_states), _reference(target, head, request.tokens),
                                   atol=2e-5, rtol=1e-4)


def test_a_swap_to_a_head_of_other_layers_drops_the_states_of_the_running_rows(target, head):
    gen = SpeculativeGenerator(target, head, num_draft_tokens=3)
    engine = gen.engine(max_batch_size=4)
    engine.capture_states = True
    running = engine.add(torch.tensor([PROMPTS[0]]), max_new_tokens=15, eos_token_id=[])
    engine.step()
    other = Eagle3Head.for_target(target, torch.arange(2, 16), layer_ids=[1, 2, 3], seed=2)
    engine.swap_draft(other, "other")
    later = engine.add(torch.tensor([PROMPTS[1]]), max_new_tokens=15, eos_token_id=[])
    while engine.has_work():
        engine.step()
    assert running.target_states is None  # half of them were another head's features
    torch.testing.assert_close(torch.cat(later.target_states)[:, : 3 * 32],
                               _reference(target, other, later.tokens)[:, : 3 * 32], atol=2e-5, rtol=1e-4)
