"""Sampled draft trees are exact: recursive rejection sampling over siblings gives the warped
target's joint distribution, whatever the draft, the tree's shape, the warping or the drafting mode."""

from dataclasses import dataclass

import pytest
import torch
from serve_helpers import assert_follows, exact_joint, hf_greedy, tiny_head
from specdistill.serve import SpeculativeGenerator
from specdistill.serve.sampling import SamplingParams, warp_probs
from specdistill.serve.tree import DraftTree, TreeShape, _ancestors
from specdistill.serve.tree_sampling import (
    SampledTree,
    _at_depth,
    _draw_children,
    accept_sampled_tree,
    sampled_topology,
)
from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopPLogitsWarper

VOCAB, LENGTH = 4, 3  # the joint of 3 tokens over 4 (64 cells)


@dataclass
class Row:
    tokens: list[int]
    params: SamplingParams
    generator: torch.Generator


def _tables(seed: int):
    """Next-token logits of a target and a (different, sharper) draft for every prefix of up to
    LENGTH - 1 tokens: {prefix tuple: [V]}."""
    g = torch.Generator().manual_seed(seed)
    prefixes = [()] + [(a,) for a in range(VOCAB)] + [(a, b) for a in range(VOCAB) for b in range(VOCAB)]
    target = {p: torch.randn(VOCAB, generator=g) for p in prefixes}
    draft = {p: 2.5 * torch.randn(VOCAB, generator=g) for p in prefixes}
    return target, draft


def _one_sample(topology, target, draft, row, mode, limit, vocab=None):
    """One step (draft the tree from ``draft``'s logits, verify with ``target``'s), then plain sampling
    from the target up to LENGTH tokens. Returns the LENGTH tokens. With ``vocab`` (target ids), the
    draft knows only those tokens and its q is kept over them, as an EAGLE-3 head's is."""
    nodes = topology.nodes
    vocab = None if vocab is None else torch.tensor(vocab)
    picks = None if vocab is None else torch.zeros(1, nodes, dtype=torch.long)
    tokens = torch.zeros(1, nodes, dtype=torch.long)
    valid = torch.ones(1, nodes, dtype=torch.bool)
    q = {}

    def prefix(node):  # the tokens from the root to ``node``
        out = []
        while node:
            out.append(int(tokens[0, node - 1]))
            node = topology.parents[node - 1]
        return tuple(reversed(out))

    for depth in range(topology.depth):
        expanding = [v for v in ([0] if depth == 0 else _at_depth(topology, depth)) if topology.children(v)]
        if expanding:
            logits = torch.stack([draft[prefix(v)] for v in expanding])[None]
            logits = logits if vocab is None else logits[..., vocab]
            _draw_children([row], topology, expanding, logits, mode, tokens, valid, q, vocab, picks)
    target_logits = torch.stack([target[prefix(v)] for v in range(nodes + 1)])[None]
    parents = torch.tensor(topology.parents)[None]
    tree = DraftTree(tokens, parents, torch.tensor(topology.depths)[None], _ancestors(parents))
    drafted = SampledTree(tree, topology, q, valid, mode, vocab, picks)
    (path, token), = accept_sampled_tree(drafted, [row], target_logits, [limit])
    out = [int(tokens[0, node - 1]) for node in path] + [token]
    while len(out) < LENGTH:
        out.append(int(torch.multinomial(warp_probs(target[tuple(out)], row.params), 1, generator=row.generator)))
    return out[:LENGTH]


def _exact(target, params):
    joint = torch.zeros(VOCAB ** LENGTH, dtype=torch.float64)
    for a in range(VOCAB):
        for b in range(VOCAB):
            for c in range(VOCAB):
                p = [warp_probs(target[x], params).double() for x in ((), (a,), (a, b))]
                joint[(a * VOCAB + b) * VOCAB + c] = p[0][a] * p[1][b] * p[2][c]
    return joint


T1, TOP_P = SamplingParams(temperature=1.0), SamplingParams(temperature=0.8, top_p=0.8)


# One node per level; wide and shallow; both, with the row's limit cutting the walk short; a draft that
# knows only some of the tokens (q kept over its own vocabulary).
@pytest.mark.parametrize("shape,limit,mode,params,vocab", [
    ("2,1,2", 2, "sample", T1, None), ("1,3,3", 2, "sample", TOP_P, None), ("2,3,6", 2, "sample", T1, None),
    ("2,3,6", 1, "top", TOP_P, None), ("2,2,4", 2, "top", T1, None), ("2,3,6", 2, "sample", T1, [1, 2, 3]),
    ("2,2,4", 2, "top", TOP_P, [0, 2])])
def test_recursive_rejection_over_a_sampled_tree_gives_the_target_joint(shape, limit, mode, params, vocab):
    topology = sampled_topology(TreeShape.parse(shape))
    target, draft = _tables(seed=len(shape) + limit)
    row = Row([0], params, torch.Generator().manual_seed(0))
    counts = torch.zeros(VOCAB ** LENGTH, dtype=torch.float64)
    for _ in range(2500):
        a, b, c = _one_sample(topology, target, draft, row, mode, limit, vocab)
        counts[(a * VOCAB + b) * VOCAB + c] += 1
    assert_follows(counts, _exact(target, params))


def test_the_topology_keeps_parents_first_and_draws_in_order():
    topology = sampled_topology(TreeShape.parse("5,3,10"))
    assert topology.nodes == 10 and topology.depth <= 5
    for j, parent in enumerate(topology.parents, start=1):
        assert parent < j
        siblings = topology.children(parent)
        assert [topology.ranks[c - 1] for c in siblings] == list(range(len(siblings)))
    assert topology.children(0)[:2] == [1, 5] and topology.parents[1] == 1  # the first draws form the trunk


def test_sampled_rows_in_the_engine_follow_the_target_with_trees(target, head):
    vocab, samples, prompt, top_p = 16, 1200, torch.tensor([[2, 5, 3, 2, 5]]), 0.9
    warpers = LogitsProcessorList([TemperatureLogitsWarper(1.0), TopPLogitsWarper(top_p)])
    expected = exact_joint(target, prompt, vocab, warpers)
    gen = SpeculativeGenerator(target, head, draft_tree="3,3,6")
    counts, steps, trees = torch.zeros(vocab * vocab, dtype=torch.float64), 0, 0
    for seed in range(samples):
        out = gen.generate(prompt, max_new_tokens=2, temperature=1.0, top_p=top_p, seed=seed, eos_token_id=[])
        x1, x2 = out.sequences[0, prompt.shape[1]:].tolist()
        counts[x1 * vocab + x2] += 1
        steps, trees = steps + out.stats.steps, trees + out.stats.tree_steps
    assert trees == steps < 2 * samples  # every step verified a tree, and some accepted a draft
    assert_follows(counts, expected)


def test_longer_sampled_runs_accept_deep_paths_and_greedy_rows_beside_them_stay_exact(target, head):
    gen = SpeculativeGenerator(target, head, draft_tree="4,3,9")
    engine = gen.engine(max_batch_size=4)
    greedy = engine.add(torch.tensor([3, 8, 1, 6]), max_new_tokens=24, eos_token_id=[])
    sampled = engine.add(torch.tensor([7, 1, 7, 1, 7, 4, 4]), max_new_tokens=40, temperature=0.7, seed=0,
                         eos_token_id=[])
    while engine.has_work():
        engine.step()
    assert greedy.tokens == hf_greedy(target, torch.tensor([greedy.prompt]), 24)[0].tolist()
    assert sampled.stats.tree_steps == sampled.stats.steps and len(sampled.stats.accept_length_hist) >= 3


def test_a_sampled_batch_is_sized_by_its_own_tree_not_the_greedy_one():
    from specdistill.models import tiny_llama

    target = tiny_llama(vocab_size=16, num_layers=4, hidden_size=32, seed=3, max_positions=24)
    gen = SpeculativeGenerator(target, tiny_head(target), draft_tree="5,3,10", sampled_tree="2,1,2")
    engine = gen.engine(max_batch_size=2)
    prompt = torch.arange(2, 22) % 16  # 20 tokens: a 2-deep tree fits in the context of 24, a 5-deep one not
    sampled = engine.add(prompt, max_new_tokens=2, temperature=0.7, seed=0, eos_token_id=[])
    greedy = engine.add(prompt, max_new_tokens=2, eos_token_id=[])
    assert engine._use_tree([sampled], [[]]) and not engine._use_tree([greedy], [[]])


def test_the_sampled_tree_is_sized_by_what_verification_costs_where_the_target_runs(monkeypatch):
    from specdistill.serve import tree_sampling

    fp32, bf16 = torch.zeros(1), torch.zeros(1, dtype=torch.bfloat16)
    monkeypatch.setattr(tree_sampling, "native_bf16", lambda device: True)
    assert tree_sampling.sampled_tree_shape("auto", bf16) == TreeShape(5, 3, 10)  # AMX verifies wide trees cheaply
    assert tree_sampling.sampled_tree_shape("auto", fp32) == TreeShape(4, 2, 6)
    monkeypatch.setattr(tree_sampling, "native_bf16", lambda device: False)
    assert tree_sampling.sampled_tree_shape("auto", bf16) == TreeShape(4, 2, 6)  # bf16 emulated: keep it small
    assert tree_sampling.sampled_tree_shape("3,2,4", bf16) == TreeShape(3, 2, 4)
    with pytest.raises(ValueError, match="DEPTH,TOP_K,NODES"):
        tree_sampling.sampled_tree_shape("none", bf16)
