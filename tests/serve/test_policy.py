"""Draft-length policies: the cost-aware choice on synthetic numbers, and HF's heuristic."""

import random

import pytest
import torch
from specdistill.serve import CostAwareDraftLength, FixedDraftLength, HeuristicDraftLength, SpeculativeGenerator

from specdistill.measure import predicted_speedup


def _feed(policy, alpha, draft_seconds, verify_seconds, steps=400, ks=(2, 4, 8), seed=0):
    """Steps with per-token acceptance alpha; verify cost verify_seconds(k)."""
    rng = random.Random(seed)
    for step in range(steps):
        k = ks[step % len(ks)]
        n = 0
        while n < k and rng.random() < alpha:
            n += 1
        policy.update(k, n, k * draft_seconds, verify_seconds(k))


def test_high_acceptance_and_a_cheap_draft_draft_many():
    policy = CostAwareDraftLength(k_max=8)
    _feed(policy, alpha=0.97, draft_seconds=0.002, verify_seconds=lambda k: 0.05)
    assert policy.next_k() == 8


def test_no_acceptance_drafts_nothing_but_probes():
    policy = CostAwareDraftLength(k_max=8, probe_every=5)
    _feed(policy, alpha=0.0, draft_seconds=0.01, verify_seconds=lambda k: 0.05)
    assert [policy.next_k() for _ in range(5)] == [0, 0, 0, 0, 1]
    # No step was told of the probe, so it lost: the gap doubles (up to 16 times probe_every).
    assert [policy.next_k() for _ in range(10)] == [0] * 9 + [1]
    for _ in range(6):
        [policy.next_k() for _ in range(80)]
    assert policy._zero_gap == 80


def test_a_new_draft_is_priced_afresh_and_the_target_costs_are_kept():
    policy = CostAwareDraftLength(k_max=8, probe_every=5)
    _feed(policy, alpha=0.0, draft_seconds=0.01, verify_seconds=lambda k: 0.05)
    assert policy.next_k() == 0
    verify = dict(policy.verify_points)
    policy.new_draft()  # the old draft's misses say nothing of the new one
    assert policy.next_k() == policy.warmup_k and policy.verify_points == verify
    _feed(policy, alpha=0.97, draft_seconds=0.002, verify_seconds=lambda k: 0.05, steps=60)
    assert policy.next_k() == 8


def test_an_expensive_draft_drafts_little():
    policy = CostAwareDraftLength(k_max=8)
    _feed(policy, alpha=0.6, draft_seconds=0.05, verify_seconds=lambda k: 0.05)  # c = 1
    assert policy.next_k() == 0


@pytest.mark.parametrize("alpha,c", [(0.9, 0.1), (0.8, 0.2), (0.7, 0.05), (0.5, 0.3)])
def test_choice_matches_the_speedup_formula(alpha, c):
    """Constant α and a flat verify cost: the best k is the argmax of DESIGN.md's
    (1 - α^(k+1)) / ((1 - α)(k c + 1)), up to estimation noise."""
    policy = CostAwareDraftLength(k_max=8)
    _feed(policy, alpha, draft_seconds=c * 0.05, verify_seconds=lambda k: 0.05, steps=3000, ks=(8,))
    chosen = policy.next_k()
    best = max(range(9), key=lambda k: predicted_speedup(alpha, k, c))
    assert predicted_speedup(alpha, chosen, c) >= 0.97 * predicted_speedup(alpha, best, c)
    for k in (1, 4, 8):
        assert policy.expected_tokens(k) == pytest.approx((1 - alpha ** (k + 1)) / (1 - alpha), rel=0.08)


def test_a_verify_cost_that_grows_with_k_shortens_k():
    flat, steep = CostAwareDraftLength(k_max=8), CostAwareDraftLength(k_max=8)
    _feed(flat, 0.8, 0.005, lambda k: 0.05)
    _feed(steep, 0.8, 0.005, lambda k: 0.05 + 0.02 * k)
    assert steep.verify_seconds(9) == pytest.approx(0.21, rel=0.01)  # k = 8: 9 tokens verified
    assert steep.next_k() < flat.next_k()


def test_heuristic_is_hugging_faces_schedule():
    policy = HeuristicDraftLength(initial=5)
    seen = []
    for accepted_all in (True, True, False, False, False, False, False, False, True):
        k = policy.next_k()
        seen.append(k)
        policy.update(k, k if accepted_all else 0, 0.0, 0.0)
    assert seen == [5, 7, 9, 8, 7, 6, 5, 4, 3] and policy.next_k() == 5
    for _ in range(10):
        policy.update(policy.next_k(), 0, 0.0, 0.0)
    assert policy.next_k() == 1


def test_bad_policies_are_refused(tiny_models):
    target, draft = tiny_models
    for bad in (-1, "fast", 2.5, True):
        with pytest.raises(ValueError, match="num_draft_tokens"):
            SpeculativeGenerator(target, draft, num_draft_tokens=bad)
    with pytest.raises(ValueError):
        FixedDraftLength(-2)


@pytest.mark.parametrize("spec", ["auto", "heuristic", CostAwareDraftLength(k_max=3, warmup_k=1)])
def test_adaptive_policies_stay_lossless(tiny_models, spec):
    target, draft = tiny_models
    ids = torch.randint(2, 64, (1, 6))
    reference = SpeculativeGenerator(target, draft, num_draft_tokens=0).generate(ids, max_new_tokens=40,
                                                                                  eos_token_id=[])
    gen = SpeculativeGenerator(target, draft, num_draft_tokens=spec)
    for _ in range(2):  # the second call starts from what the policy learned
        out = gen.generate(ids, max_new_tokens=40, eos_token_id=[])
        assert out.sequences.tolist() == reference.sequences.tolist()
    assert out.stats.proposed > 0


def test_a_batched_step_is_learned_once():
    """Three rows of one step: their acceptances all count, the step's forgetting and
    timing count once, as one update would."""
    batched, single = CostAwareDraftLength(), CostAwareDraftLength()
    batched.update_rows([(3, 3), (3, 1), (2, 0)], 3, draft_seconds=0.03, verify_seconds=0.1)
    single.update(3, 3, 0.03, 0.1)
    assert batched.verify_points == {(3, 12): [0.1, 1.0]} and single.verify_points == {(1, 4): [0.1, 1.0]}  # 3 x 4
    assert batched.draft_step_seconds == single.draft_step_seconds
    assert batched.accepted_at[:3] == [2, 1, 1] and batched.reached_at[:3] == [3, 2, 1]


def _feed_tree(policy, depth_rate, rows, verify_seconds, tree_seconds, steps=300, depth=5, nodes=10, seed=0):
    """Tree steps of a batch: the walk goes one level deeper with probability depth_rate."""
    rng = random.Random(seed)
    for _ in range(steps):
        accepted = []
        for _ in range(rows):
            n = 0
            while n < depth and rng.random() < depth_rate:
                n += 1
            accepted.append(n)
        policy.update_tree(accepted, depth, nodes, tree_seconds, verify_seconds(rows * (nodes + 1)))


def _feed_chain(policy, alpha, rows, verify_seconds, draft_seconds, steps=300, ks=(0, 2, 4), seed=1):
    rng = random.Random(seed)
    for step in range(steps):
        k = ks[step % len(ks)]
        outcomes = []
        for _ in range(rows):
            n = 0
            while n < k and rng.random() < alpha:
                n += 1
            outcomes.append((k, n))
        policy.update_rows(outcomes, k, k * draft_seconds, verify_seconds(rows * (k + 1)))


def test_a_tree_never_measured_is_tried_first():
    assert CostAwareDraftLength().use_tree(rows=1, depth=5, nodes=10)


def test_a_tree_that_goes_deeper_wins_while_verifying_is_nearly_flat():
    policy = CostAwareDraftLength()
    memory_bound = lambda tokens: 0.030 + 0.0002 * tokens  # noqa: E731
    _feed_chain(policy, 0.6, rows=1, verify_seconds=memory_bound, draft_seconds=0.003)
    _feed_tree(policy, 0.85, rows=1, verify_seconds=memory_bound, tree_seconds=0.015)
    assert policy.tree_acceptance(5)[0] == pytest.approx(0.85, abs=0.05)
    assert policy.use_tree(rows=1, depth=5, nodes=10)


def test_a_large_batch_on_a_compute_bound_machine_drafts_a_chain():
    """The same acceptance, but 16 rows x 11 tokens make the verification cost grow with its tokens."""
    policy = CostAwareDraftLength()
    compute_bound = lambda tokens: 0.030 + 0.0015 * tokens  # noqa: E731
    _feed_chain(policy, 0.6, rows=16, verify_seconds=compute_bound, draft_seconds=0.003)
    _feed_tree(policy, 0.85, rows=16, verify_seconds=compute_bound, tree_seconds=0.015)
    assert policy.verify_seconds(16 * 11) == pytest.approx(compute_bound(16 * 11), rel=0.02)
    assert not policy.use_tree(rows=16, depth=5, nodes=10)
    # 16 rows x 1.6 tokens over 0.081 s beat 16 x 1 over 0.054 s and k = 2, but by 7%: within the margin
    # for what drafting costs that the model leaves out, so nothing is drafted; without a margin, k = 1.
    assert policy.next_k() == 0
    policy.margin = 0.0
    assert policy.next_k() == 1


def test_a_draft_that_never_hits_drafts_nothing_no_tree_and_no_chain():
    """Another language, say: neither the tree nor any chain pays, so the step is the target's own."""
    policy = CostAwareDraftLength(probe_every=1000)
    flat = lambda tokens: 0.030 + 0.0002 * tokens  # noqa: E731
    _feed_tree(policy, 0.02, rows=1, verify_seconds=flat, tree_seconds=0.015, steps=100)
    _feed_chain(policy, 0.02, rows=1, verify_seconds=flat, draft_seconds=0.003, steps=100)
    assert not policy.use_tree(rows=1, depth=5, nodes=10)
    assert policy.next_k() == 0
    # A tree passed over is tried again every tree_probe_every steps, so a draft that gets better is seen.
    # (The call above was the first step passed over.)
    decisions = [policy.use_tree(rows=1, depth=5, nodes=10) for _ in range(policy.tree_probe_every - 1)]
    assert decisions == [False] * (policy.tree_probe_every - 2) + [True]
    # A probe that loses (nothing here says otherwise) doubles the gap, so a costly tree is rarely re-tried.
    decisions = [policy.use_tree(rows=1, depth=5, nodes=10) for _ in range(2 * policy.tree_probe_every)]
    assert decisions == [False] * (2 * policy.tree_probe_every - 1) + [True]


def _serve(policy, verify_seconds, steps, rate=0.85, depth=5, nodes=10, seed=0):
    """The engine's loop on one row: each step the policy picks tree or chain and is told what happened.
    The walk through the tree goes one level deeper with probability ``rate``, a chain's draft with 0.7."""
    rng, picks = random.Random(seed), []
    for _ in range(steps):
        if policy.use_tree(rows=1, depth=depth, nodes=nodes):
            n = next((i for i in range(depth) if rng.random() >= rate), depth)
            policy.update_tree([n], depth, nodes, 0.015, verify_seconds(nodes + 1))
            picks.append("tree")
        else:
            k = policy.next_k()
            n = next((i for i in range(k) if rng.random() >= 0.7), k)
            policy.update_rows([(k, n)], k, 0.003 * k, verify_seconds(k + 1))
            picks.append(k)
    return picks


def test_starting_cold_the_chain_is_timed_too_and_a_costly_tree_is_dropped():
    """A CPU without native bf16: verifying 11 tokens costs ~6 single steps (measured on an AVX2 EPYC).
    The tree accepts more, but the chain must be timed before the tree can be judged, and then wins."""
    steep = lambda tokens: 0.04 * (1 + 0.5 * (tokens - 1))  # noqa: E731
    picks = _serve(CostAwareDraftLength(), steep, steps=300)
    assert picks[:6] == ["tree"] * 5 + [4]  # a chain step early on: its cost is timed, not guessed
    assert picks[100:].count("tree") <= 4  # afterwards only the tree's re-probes


def test_starting_cold_a_tree_that_pays_keeps_being_drafted():
    memory_bound = lambda tokens: 0.04 + 0.0002 * tokens  # noqa: E731
    picks = _serve(CostAwareDraftLength(), memory_bound, steps=300)
    assert picks[100:].count("tree") >= 190  # all but the chain's re-probes


def test_a_draft_step_that_first_reads_missed_features_does_not_set_the_draft_cost():
    """After steps of k = 0 (or a prefill) a head reads the target features it missed: one slow forward
    that drafting step after step does not pay, so it must not make drafting look dear."""
    policy = CostAwareDraftLength()
    policy.update_rows([(2, 1)], 2, draft_seconds=0.5, verify_seconds=0.05)  # after the prefill
    assert policy.draft_step_seconds is None
    policy.update_rows([(2, 1)], 2, draft_seconds=0.01, verify_seconds=0.05)
    assert policy.draft_step_seconds == pytest.approx(0.005)
    policy.update_rows([(0, 0)], 0, draft_seconds=0.0, verify_seconds=0.04)
    policy.update_rows([(1, 1)], 1, draft_seconds=0.3, verify_seconds=0.05)  # a probe after k = 0
    assert policy.draft_step_seconds == pytest.approx(0.005)
    policy.update_rows([(0, 0)], 0, draft_seconds=0.0, verify_seconds=0.04)
    policy.update_tree([3], 5, 10, draft_seconds=0.4, verify_seconds=0.06)  # the tree's first try, after k = 0
    assert policy.tree_draft_seconds is None and policy.use_tree(rows=1, depth=5, nodes=10)
    policy.update_tree([3], 5, 10, draft_seconds=0.02, verify_seconds=0.06)
    assert policy.tree_draft_seconds == pytest.approx(0.02)


def test_a_tree_that_could_not_pay_even_if_all_accepted_is_never_probed():
    """Verifying 11 tokens costs 6 steps and the tree is 5 deep: at most 6 tokens for 6 steps' time."""
    policy = CostAwareDraftLength()
    steep = lambda tokens: 0.04 * (1 + 0.5 * (tokens - 1))  # noqa: E731
    _feed_tree(policy, 0.9, rows=1, verify_seconds=steep, tree_seconds=0.015, steps=20)
    _feed_chain(policy, 0.7, rows=1, verify_seconds=steep, draft_seconds=0.003, steps=300, ks=(0, 1, 2))
    assert not any(policy.use_tree(rows=1, depth=5, nodes=10) for _ in range(2000))


def test_retrieval_branches_alone_are_tried_kept_while_they_pay_and_dropped_when_they_stop():
    policy = CostAwareDraftLength(k_max=8)
    _feed(policy, alpha=0.0, draft_seconds=0.01, verify_seconds=lambda k: 0.03 + 0.005 * k)  # a useless head
    assert policy.next_k() == 0
    assert policy.use_branch([6])  # never measured: the optimistic prior tries it
    for _ in range(30):
        policy.update_branch([(6, 6)], verify_seconds=0.06, width=6)  # copied text, accepted whole
    assert policy.use_branch([6]) and policy.branch_tokens_per_second([6]) > 3 * policy.tokens_per_second(0)
    for _ in range(200):  # the text stops repeating (a branch accepted whole 1 time in 4 would still pay)
        policy.update_branch([(6, 0)], verify_seconds=0.06, width=6)
    assert not policy.use_branch([6])


def test_a_batch_prices_each_rows_own_branch_not_every_row_at_the_longest():
    """One row of four copies text its branch predicts whole; the others have no branch: verifying
    branches alone gives those three one token each, so the head's good chain must stay the choice."""
    policy = CostAwareDraftLength(k_max=8)
    cost = lambda tokens: 0.04 + 0.001 * tokens  # noqa: E731
    _feed_chain(policy, 0.8, rows=4, verify_seconds=cost, draft_seconds=0.003, ks=(2, 4, 6))
    for _ in range(30):
        policy.update_branch([(6, 6), (0, 0), (0, 0), (0, 0)], verify_seconds=cost(4 * 7), width=6)
    assert not policy.use_branch([6, 0, 0, 0])
    assert policy.branch_tokens_per_second([6, 0, 0, 0]) == pytest.approx((7 + 3) / cost(28), rel=0.05)
    assert policy.use_branch([6, 6, 6, 6])  # every row with a branch that copies: that pays


def test_branches_are_looked_up_only_where_a_tree_or_branches_could_win():
    """16 rows on a compute-bound target: verifying 16 x 9 tokens costs what 9 plain steps do, so no
    branch or tree could pay and the lookup is skipped; one row on the same target could use them."""
    policy = CostAwareDraftLength(k_max=8)
    assert policy.branches_may_pay(rows=16, length=8, depth=5, nodes=12)  # nothing measured: try them
    compute_bound = lambda tokens: 0.004 * tokens  # noqa: E731
    _feed_tree(policy, 0.6, rows=16, verify_seconds=compute_bound, tree_seconds=0.02, steps=20, nodes=12)
    _feed_chain(policy, 0.6, rows=16, verify_seconds=compute_bound, draft_seconds=0.003, ks=(0, 1, 2))
    assert not policy.branches_may_pay(rows=16, length=8, depth=5, nodes=12)
    latency_bound = lambda tokens: 0.03 + 0.0005 * tokens  # noqa: E731
    _feed_tree(policy, 0.6, rows=1, verify_seconds=latency_bound, tree_seconds=0.01, steps=50, nodes=12)
    _feed_chain(policy, 0.6, rows=1, verify_seconds=latency_bound, draft_seconds=0.003, ks=(0, 1, 2))
    assert policy.branches_may_pay(rows=1, length=8, depth=5, nodes=12)


def test_verification_is_priced_at_the_batch_size_it_was_timed_at():
    """16 tokens cost 0.074 s as 8 rows of 2 but 0.03 s as 16 rows of 1 (the target's one-token path):
    a 16-row batch must price drafting none at its own 0.03 s, where it beats a chain of 2."""
    policy = CostAwareDraftLength(k_max=2)
    for step in range(60):
        policy.update_rows([(1, 1)] * 8, 1, draft_seconds=0.005, verify_seconds=0.074)  # 8 rows x 2 tokens
        policy.update_rows([(2, 2), (2, 1), (2, 2), (2, 0)] * 4, 2, draft_seconds=0.01, verify_seconds=0.1)
        if step % 10 == 0:
            policy.update_rows([(0, 0)] * 16, 0, draft_seconds=0.0, verify_seconds=0.03)  # a zero probe
    policy.rows = 8
    assert policy.verify_seconds(16) == pytest.approx(0.074, rel=0.01)
    policy.rows = 16
    assert policy.verify_seconds(16) == pytest.approx(0.03, rel=0.01)
    assert policy.next_k() == 0


def test_a_batch_times_drafting_nothing_before_it_prices_it():
    """Chains timed at 16 rows lie on a line that puts 16 one-token rows at 0.07 s; they take 0.03 s on
    the target's one-token path, which only a step without drafts shows."""
    policy = CostAwareDraftLength(k_max=4)
    line = lambda tokens: 0.05 + 0.00125 * tokens  # noqa: E731
    for step in range(40):
        k = 2 + step % 3
        policy.update_rows([(k, 2)] * 16, k, draft_seconds=0.004 * k, verify_seconds=line(16 * (k + 1)))
    assert policy.next_k() == 0  # never timed without drafts at 16 rows: timed now
    policy.update_rows([(0, 0)] * 16, 0, draft_seconds=0.0, verify_seconds=0.03)
    assert policy.verify_seconds(16) == pytest.approx(0.03)
    assert policy.next_k() == 0  # 16 / 0.03 s against at best 48 / 0.126 s
    policy.update_rows([(0, 0)] * 16, 0, draft_seconds=0.0, verify_seconds=0.09)  # a slow host: it pays again
    policy.update_rows([(0, 0)] * 16, 0, draft_seconds=0.0, verify_seconds=0.09)
    assert policy.next_k() > 0


def test_a_one_token_step_is_priced_from_one_token_steps_at_other_batch_sizes():
    """A batch size never timed: drafting nothing is priced between the sizes timed drafting nothing,
    and a chain from the multi-token steps, not from a line through both kinds."""
    policy = CostAwareDraftLength(k_max=4)
    for rows, one, two in ((8, 0.02, 0.06), (16, 0.03, 0.09)):
        policy.rows = rows
        policy.update_rows([(0, 0)] * rows, 0, draft_seconds=0.0, verify_seconds=one)
        policy.update_rows([(1, 1)] * rows, 1, draft_seconds=0.004, verify_seconds=two)
    policy.rows = 12
    assert policy.verify_seconds(12) == pytest.approx(0.025, rel=0.02)  # between 8 and 16 rows of one token
    assert policy.verify_seconds(24) == pytest.approx(0.075, rel=0.02)  # between 8 x 2 and 16 x 2 tokens


def test_with_one_token_count_timed_more_tokens_cost_in_proportion():
    """The bench's warm-up times one 1-row tree of 13 tokens (0.040 s); then 16 rows arrive. Priced flat (and
    drafting the warm-up's chain of 4 while no chain was timed), a 16-row chain of 4 (80 tokens) was probed
    at 0.1-0.2 s a step, 2-5 steps of the target alone (the 2-vCPU Xeon); in proportion, none is drafted."""
    policy = CostAwareDraftLength()
    policy.update_tree([3], 5, 12, draft_seconds=0.017, verify_seconds=0.040)
    policy.rows = 1
    assert policy.verify_seconds(5) == pytest.approx(0.040)  # fewer tokens: not cheaper
    policy.update_rows([(0, 0)] * 16, 0, draft_seconds=0.0, verify_seconds=0.043)
    assert policy.verify_seconds(80) == pytest.approx(0.040 * 80 / 13)
    assert policy.next_k() == 0


def test_a_batch_size_first_times_the_cheapest_chain():
    """1-row steps of 5 and 13 tokens cost the same (a memory-bound row), which says nothing of 16 rows'
    (0.043 s for one token a row, 0.079 for two, ~0.1-0.2 for five on the 2-vCPU Xeon). The first multi-token
    step at a batch size drafts one token, and its time prices the chains from then on."""
    policy = CostAwareDraftLength()
    for _ in range(10):
        policy.update_tree([2], 5, 12, draft_seconds=0.004, verify_seconds=0.040)
        policy.update_rows([(4, 2)], 4, draft_seconds=0.002, verify_seconds=0.040)
    policy.update_rows([(0, 0)] * 16, 0, draft_seconds=0.0, verify_seconds=0.043)
    assert policy.tokens_per_second(2) > policy.tokens_per_second(1)  # priced from 1-row steps: a chain of 2
    assert policy.next_k() == 1
    policy.update_rows([(1, 1)] * 10 + [(1, 0)] * 6, 1, draft_seconds=0.004, verify_seconds=0.079)
    assert policy.verify_seconds(32) == pytest.approx(0.079)
    assert policy.next_k() == 0


def test_a_tree_that_loses_its_first_steps_is_tried_again_soon():
    """One tree step's walk is a coin toss, and answers start hard: a tree whose first two steps accept
    nothing must not be judged on them. Measured: an adapted head whose tree made τ 3.33 on translation (on
    every step) was drafted on 3 steps of 220 as served, at τ 1.4, after losing two of its first three."""
    policy, rng = CostAwareDraftLength(), random.Random(1)  # session 23's policy: 10 tree steps of 200
    verify = lambda tokens: 0.018 + 0.0004 * tokens  # noqa: E731  (one row on the 2-vCPU Xeon)
    trees = 0
    for _ in range(200):
        if policy.use_tree(rows=1, depth=5, nodes=12):
            walk = 0 if trees < 2 else next((i for i in range(5) if rng.random() >= 0.75), 5)
            policy.update_tree([walk], 5, 12, 0.0075, verify(13))
            trees += 1
        else:
            k = policy.next_k()
            n = next((i for i in range(k) if rng.random() >= 0.3), k)
            policy.update_rows([(k, n)], k, 0.0018 * k, verify(k + 1))
    assert trees > 100


def test_a_tree_that_beats_every_chain_still_gives_way_to_branches_that_beat_it():
    """Translation requests whose answers copy their prompt: a retrieval branch alone (one verification, no
    draft) is accepted whole, which beats the head's tree; the tree, priced against chains alone, took those
    steps (measured: 0.86x the tokens/s of a worse head whose tree lost to the chains)."""
    policy = CostAwareDraftLength(k_max=8)
    verify = lambda tokens: 0.020 + 0.0004 * tokens  # noqa: E731
    _feed_tree(policy, 0.75, rows=1, verify_seconds=verify, tree_seconds=0.012, nodes=12)
    _feed_chain(policy, 0.3, rows=1, verify_seconds=verify, draft_seconds=0.002, ks=(0, 1, 2))
    for _ in range(30):
        policy.update_branch([(8, 8)], verify_seconds=verify(9), width=8)
    assert policy.tree_tokens_per_second(8, 20) > policy._best_to_beat()  # the tree beats every chain
    assert policy.branch_tokens_per_second([8]) > policy.tree_tokens_per_second(8, 20)
    assert not policy.use_tree(rows=1, depth=8, nodes=20, branches=[8])
    assert policy.use_branch([8])
    assert policy.use_tree(rows=1, depth=5, nodes=12, branches=[0])  # no branch this step: the tree
