"""The samplers every sampled token goes through: one draw by inverting the running sum, and draws
without replacement, each against its exact distribution (chi-square) and at the edges."""

import itertools

import pytest
import torch
from serve_helpers import assert_follows
from specdistill.serve.sampling import draw, draw_distinct

WEIGHTS = torch.tensor([0.0, 3.0, 0.5, 0.0, 1.5, 0.0001, 2.0, 0.0])  # zeros inside and at both ends


def test_a_draw_follows_the_weights_unnormalized():
    generator = torch.Generator().manual_seed(0)
    counts = torch.zeros(len(WEIGHTS), dtype=torch.float64)
    for _ in range(6000):
        counts[draw(WEIGHTS, generator)] += 1
    assert_follows(counts, (WEIGHTS / WEIGHTS.sum()).double())


def test_zero_weights_are_never_drawn_even_at_the_edges_of_the_uniform(monkeypatch):
    for u in (0.0, 1.0 - 2 ** -53):  # the smallest and largest uniforms torch.rand can give
        monkeypatch.setattr(torch, "rand", lambda *a, u=u, **k: torch.tensor([u], dtype=torch.float64))
        assert WEIGHTS[draw(WEIGHTS, None)] > 0
    monkeypatch.undo()
    assert draw(torch.tensor([0.0, 0.0, 5.0]), None) == 2


def test_draws_without_replacement_follow_successive_sampling():
    weights = WEIGHTS[WEIGHTS > 0][:4].double()  # 4 tokens: the 12 ordered pairs
    generator = torch.Generator().manual_seed(1)
    pairs = list(itertools.permutations(range(4), 2))
    counts = torch.zeros(len(pairs), dtype=torch.float64)
    for _ in range(6000):
        counts[pairs.index(tuple(draw_distinct(weights, 2, generator)))] += 1
    total = weights.sum()
    expected = torch.tensor([weights[a] / total * weights[b] / (total - weights[a]) for a, b in pairs])
    assert_follows(counts, expected)


@pytest.mark.parametrize("count", [1, 3, 5])
def test_draws_without_replacement_stop_when_the_weights_run_out(count):
    drawn = draw_distinct(torch.tensor([0.0, 1.0, 0.0, 2.0, 0.0]), count, torch.Generator().manual_seed(2))
    assert len(drawn) == min(count, 2) and len(set(drawn)) == len(drawn) and set(drawn) <= {1, 3}
