"""The EAGLE-3 head in the engine: what it computes at inference equals what training-time
test trains, and decoding with it stays lossless (greedy equality, exact sampling)."""

import pytest
import torch
from serve_helpers import assert_follows, exact_joint, hf_greedy, sampled_pairs
from specdistill.serve import SpeculativeGenerator
from specdistill.serve.eagle_runner import EagleRunner
from specdistill.serve.tree import TreeShape
from transformers import LogitsProcessorList, TemperatureLogitsWarper

from specdistill.models import tiny_llama
from specdistill.models.eagle3 import Eagle3Head, save_head
from specdistill.models.eagle3_io import load_head


def _features(target, head, ids):
    hidden = target(input_ids=ids, output_hidden_states=True).hidden_states
    return torch.cat([hidden[i] for i in head.layer_ids], -1)


@torch.no_grad()
def test_inference_slots_equal_training_time_test(target, head):
    ids = torch.tensor([[3, 7, 1, 9, 4, 12, 5, 8, 2, 6]])
    features = _features(target, head, ids)
    steps = head.ttt_logits(features, ids, steps=3)
    runner = EagleRunner(head)
    for c in (0, 3, 6):  # a block that starts after the target verified position c
        state = runner.start(1, 16)
        runner.take_features(state, features, [c + 1])
        got = runner.forward(state, ids[:, 1: c + 2], [c])  # slots 0..c, then the drafts of the block
        for j in range(1, 4):
            torch.testing.assert_close(got[0, head.draft_ids], steps[j - 1][0, c], atol=1e-5, rtol=1e-5)
            assert torch.isinf(got[0, :2]).all()  # outside the draft vocabulary: q = 0
            if j < 3:
                got = runner.forward(state, ids[:, c + j + 1: c + j + 2], [0])


@pytest.mark.parametrize("fast_path", ["auto", False])
def test_greedy_output_is_the_target_own_one_row_or_batched(target, head, fast_path):
    prompts = [torch.tensor([[2, 5, 3, 9]]), torch.tensor([[7, 1, 7, 1, 7, 4, 4]]), torch.tensor([[4]])]
    gen = SpeculativeGenerator(target, head, num_draft_tokens=3, fast_path=fast_path)
    outs = gen.generate_batch(prompts, max_new_tokens=20, eos_token_id=[])
    for ids, out in zip(prompts, outs):
        torch.testing.assert_close(out.sequences, hf_greedy(target, ids, 20))
    single = gen.generate(prompts[1], max_new_tokens=20, eos_token_id=[])
    torch.testing.assert_close(single.sequences, outs[1].sequences)
    assert sum(o.stats.proposed for o in outs) > 0


def test_sampled_output_follows_the_target_distribution(target, head):
    vocab, samples = 16, 1500
    prompt = torch.tensor([[2, 5, 3, 2, 5]])
    expected = exact_joint(target, prompt, vocab, LogitsProcessorList([TemperatureLogitsWarper(1.0)]))
    gen = SpeculativeGenerator(target, head, num_draft_tokens=2)
    counts, stats = sampled_pairs(gen, prompt, vocab, samples)
    assert stats.proposed > 0 and 0 < stats.alpha < 1
    assert_follows(counts, expected)


def test_saved_head_loads_back_and_drafts_the_same(target, head, tmp_path):
    save_head(head, tmp_path / "head", speculative_tokens=3, verifier="tiny")
    config = (tmp_path / "head" / "config.json").read_text()
    assert '"speculators_model_type": "eagle3"' in config and '"proposal_type": "greedy"' in config
    loaded = load_head(tmp_path / "head", target)
    for key, value in head.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value)
    with pytest.raises(ValueError, match="made for a target with vocabulary 16"):
        load_head(tmp_path / "head", tiny_llama(vocab_size=20, num_layers=4, hidden_size=32))
    with pytest.raises(ValueError, match="not an EAGLE-3 head"):
        load_head(tmp_path, target)


def test_requests_joining_and_leaving_a_running_batch_stay_exact(target, head):
    gen = SpeculativeGenerator(target, head, num_draft_tokens=3)
    engine = gen.engine(max_batch_size=4)
    first = engine.add(torch.tensor([3, 8, 1, 6]), max_new_tokens=16, eos_token_id=[])
    for _ in range(3):
        engine.step()
    later = [engine.add(torch.tensor(p), max_new_tokens=n, eos_token_id=[]) for p, n in (([5, 2], 6), ([9], 12))]
    while engine.has_work():
        engine.step()
    for request in [first, *later]:
        expected = hf_greedy(target, torch.tensor([request.prompt]), request.max_new_tokens)
        assert request.tokens == expected[0].tolist()


@pytest.mark.parametrize("shape", ["3,2,4", "4,3,12", "1,1,1", "5,4,40"])
def test_draft_trees_keep_greedy_output_the_target_own(target, head, shape):
    prompts = [torch.tensor([[2, 5, 3, 9]]), torch.tensor([[7, 1, 7, 1, 7, 4, 4]]), torch.tensor([[4]])]
    gen = SpeculativeGenerator(target, head, draft_tree=shape)
    outs = gen.generate_batch(prompts, max_new_tokens=20, eos_token_id=[])
    for ids, out in zip(prompts, outs):
        torch.testing.assert_close(out.sequences, hf_greedy(target, ids, 20))
    # Paths of several nodes were accepted, so the moves into place (keep_path) were exercised.
    assert max(len(o.stats.accept_length_hist) for o in outs) >= min(3, gen.draft_tree.depth + 1)


def test_a_tree_accepts_more_per_step_than_its_chain(target, head):
    prompt = torch.tensor([[7, 1, 7, 1, 7, 4, 4]])
    chain = SpeculativeGenerator(target, head, num_draft_tokens=4).generate(prompt, 40, eos_token_id=[])
    tree = SpeculativeGenerator(target, head, draft_tree="4,4,24").generate(prompt, 40, eos_token_id=[])
    assert tree.sequences.tolist() == chain.sequences.tolist()
    assert tree.stats.steps < chain.stats.steps


def test_sampled_rows_told_to_keep_the_chain_do_and_the_greedy_rows_beside_them_stay_exact(target, head):
    gen = SpeculativeGenerator(target, head, draft_tree="3,3,9", draft_tree_sampling="chain")
    engine = gen.engine(max_batch_size=4)
    greedy = engine.add(torch.tensor([3, 8, 1, 6]), max_new_tokens=16, eos_token_id=[])
    engine.step()  # tree steps while every row is greedy
    sampled = engine.add(torch.tensor([5, 2]), max_new_tokens=10, temperature=0.8, seed=0, eos_token_id=[])
    while engine.has_work():
        engine.step()
    assert greedy.tokens == hf_greedy(target, torch.tensor([greedy.prompt]), 16)[0].tolist()
    assert sampled.finish_reason == "length" and len(sampled.tokens) == 12
    assert greedy.stats.tree_steps >= 1 and sampled.stats.tree_steps == 0  # no tree while a row samples


def test_batches_past_the_tree_cap_draft_a_chain_and_stay_exact(target, head):
    prompts = [[2, 5, 3, 9], [7, 1, 7, 1, 7, 4, 4], [4, 6]]
    capped = SpeculativeGenerator(target, head, num_draft_tokens=5, draft_tree="4,4,24", draft_tree_max_batch=2)
    engine = capped.engine(max_batch_size=4)
    rows = [engine.add(torch.tensor(p), max_new_tokens=30, eos_token_id=[]) for p in prompts]
    engine.step()  # three rows, over the cap of two: each drafts the chain of 5 (a tree step counts 4)
    assert [r.stats.proposed for r in rows] == [5, 5, 5]
    while engine.has_work():
        engine.step()
    for row in rows:
        assert row.tokens == hf_greedy(target, torch.tensor([row.prompt]), 30)[0].tolist()
    one, chain = (gen.generate(torch.tensor([prompts[1]]), 30, eos_token_id=[]) for gen in
                  (capped, SpeculativeGenerator(target, head, num_draft_tokens=5)))
    assert one.stats.steps < chain.stats.steps  # one row, under the cap: a tree
    with pytest.raises(ValueError, match="draft_tree_max_batch"):
        SpeculativeGenerator(target, head, draft_tree="auto", draft_tree_max_batch=0)


def test_a_tree_path_stops_at_eos_and_counts_only_what_a_step_could_accept(target, head):
    prompt = torch.tensor([[7, 1, 7, 1, 7, 4, 4]])
    full = hf_greedy(target, prompt, 20)[0, prompt.shape[1]:].tolist()
    eos = full[5]  # a token the target produces: output stops after its first appearance
    gen = SpeculativeGenerator(target, head, draft_tree="4,3,12")
    out = gen.generate(prompt, max_new_tokens=20, eos_token_id=[eos])
    assert out.sequences[0, prompt.shape[1]:].tolist() == full[: full.index(eos) + 1]
    assert out.finish_reason == "eos"
    last = gen.generate(prompt, max_new_tokens=1, eos_token_id=[])  # no room for a draft: none counted
    assert last.stats.proposed == 0 and last.stats.new_tokens == 1


def test_tree_specs():
    assert TreeShape.parse("auto") == TreeShape(5, 8, 12) and TreeShape.parse("auto", head=False) is None
    assert TreeShape.parse("none") is None and TreeShape.parse(" 4, 2 ,6") == TreeShape(4, 2, 6)


def test_draft_trees_say_what_they_need(target, head):
    with pytest.raises(ValueError, match="DEPTH,TOP_K,NODES"):
        SpeculativeGenerator(target, head, draft_tree="deep")
    with pytest.raises(ValueError, match="proposes 6 nodes"):
        SpeculativeGenerator(target, head, draft_tree="2,2,7")
    with pytest.raises(ValueError, match="needs an EAGLE-3 head"):
        SpeculativeGenerator(target, target, draft_tree="2,2,4")
    with pytest.raises(ValueError, match="needs an EAGLE-3 head"):
        SpeculativeGenerator(target, head, draft_tree="2,2,4", fast_path=False)
    assert SpeculativeGenerator(target, target, draft_tree="auto").draft_tree is None  # auto: a chain for an LM
    windowed = tiny_llama(vocab_size=16, num_layers=4, hidden_size=32, seed=3)
    windowed.config.sliding_window, windowed.config.model_type = 5, "mistral"
    with pytest.raises(ValueError, match="sliding-window"):
        SpeculativeGenerator(windowed, head, draft_tree="2,2,4")


def test_auto_with_a_tree_stays_lossless_and_stops_drafting_a_poor_head(target, head):
    prompt = torch.tensor([[2, 5, 3, 9, 1]])
    fixed = SpeculativeGenerator(target, head, num_draft_tokens=4, draft_tree="4,3,8")
    auto = SpeculativeGenerator(target, head, num_draft_tokens="auto", draft_tree="4,3,8")
    reference = hf_greedy(target, prompt, 60)
    for gen in (fixed, auto):
        out = gen.generate(prompt, max_new_tokens=60, eos_token_id=[])
        torch.testing.assert_close(out.sequences, reference)
    policy = auto.draft_length
    assert policy.tree_draft_seconds is not None and policy.draft_step_seconds is not None  # both were tried


@pytest.mark.parametrize("retrieval", ["ngram:8", "prompt-lookup:6"])
def test_retrieval_branches_join_the_tree_and_keep_greedy_output_the_target_own(target, head, retrieval):
    # The tiny target falls into repeats, which the n-gram branch copies deeper than the head's 2 levels.
    prompts = [torch.tensor([[2, 5, 3, 9]]), torch.tensor([[7, 1, 7, 1, 7, 4, 4]]), torch.tensor([[4]]),
               torch.tensor([[3, 8, 1, 6, 3, 8, 1, 6, 3, 8]])]
    plain = SpeculativeGenerator(target, head, draft_tree="2,2,4")
    joined = SpeculativeGenerator(target, head, draft_tree="2,2,4", draft_retrieval=retrieval)
    outs = joined.generate_batch(prompts, max_new_tokens=40, eos_token_id=[])  # rows with and without branches
    for ids, out in zip(prompts, outs):
        torch.testing.assert_close(out.sequences, hf_greedy(target, ids, 40))
    one = joined.generate(prompts[1], 40, eos_token_id=[])
    torch.testing.assert_close(one.sequences, outs[1].sequences)
    if retrieval.startswith("ngram"):  # paths deeper than the head's tree, in fewer steps
        assert len(one.stats.accept_length_hist) > 3
        assert one.stats.steps < plain.generate(prompts[1], 40, eos_token_id=[]).stats.steps


def test_retrieval_branches_respect_the_budget_and_need_a_tree(target, head):
    gen = SpeculativeGenerator(target, head, draft_tree="2,2,4", draft_retrieval="ngram:8")
    prompt = torch.tensor([[7, 1, 7, 1, 7, 4, 4]])
    for budget in (1, 2, 9):
        out = gen.generate(prompt, max_new_tokens=budget, eos_token_id=[])
        torch.testing.assert_close(out.sequences, hf_greedy(target, prompt, budget))
    with pytest.raises(ValueError, match="joins a head's draft tree"):
        SpeculativeGenerator(target, head, draft_tree="none", draft_retrieval="ngram")
    with pytest.raises(ValueError, match="METHOD"):
        SpeculativeGenerator(target, head, draft_tree="auto", draft_retrieval="ngram:x")


def test_auto_verifies_retrieval_branches_alone_when_they_pay_and_stays_exact(target, head):
    # The tiny target repeats itself: its branches are accepted whole, and the policy learns to verify
    # them alone (no head call) on steps it does not draft the tree.
    prompts = [torch.tensor([[7, 1, 7, 1, 7, 4, 4]]), torch.tensor([[2, 5, 3, 9]])]
    gen = SpeculativeGenerator(target, head, num_draft_tokens="auto", draft_tree="2,2,4", draft_retrieval="ngram:8")
    for ids in prompts:
        torch.testing.assert_close(gen.generate(ids, 60, eos_token_id=[]).sequences, hf_greedy(target, ids, 60))
    policy = gen.draft_length
    assert policy.branch_reached_at and policy.branch_accepted_at[0] > 0


@pytest.mark.parametrize("auto", [False, True])
def test_a_head_tree_and_branches_decode_up_to_the_target_context(auto):
    # The last steps of a request that fills the context: the tree, the branch and the chain must
    # each stop at the last position, and the output stay the target's own.
    context = 40
    target = tiny_llama(vocab_size=16, num_layers=4, hidden_size=32, max_positions=context, seed=3)
    with torch.no_grad():
        target.lm_head.weight.mul_(6)
    head = Eagle3Head.for_target(target, torch.arange(2, 16), layer_ids=[0, 2, 3], seed=1)
    gen = SpeculativeGenerator(target, head, num_draft_tokens="auto" if auto else 4, draft_tree="3,2,6",
                               draft_retrieval="ngram:8")
    prompt = torch.tensor([[7, 1, 7, 1, 7, 4, 4, 3, 8, 1, 6, 3, 8, 1, 6, 3, 8, 2, 5, 3, 9, 7, 1, 7, 1, 7]])
    room = context - prompt.shape[1]
    out = gen.generate(prompt, max_new_tokens=room, eos_token_id=[])
    torch.testing.assert_close(out.sequences, hf_greedy(target, prompt, room))
    with pytest.raises(ValueError, match="context of 40 positions"):
        gen.generate(prompt, max_new_tokens=room + 1, eos_token_id=[])


def test_a_tree_stops_drafting_where_deeper_levels_could_not_be_selected_and_is_the_same_tree(target, head,
                                                                                            monkeypatch):
    from specdistill.serve import scheduler
    from specdistill.serve import tree as tree_module

    def run():
        drafted = []

        def recording(*args, **kwargs):
            tree, calls = tree_module.draft_tree(*args, **kwargs)
            drafted.append((tree.tokens.tolist(), tree.parents.tolist(), calls))
            return tree, calls

        with monkeypatch.context() as patch:
            patch.setattr(scheduler, "draft_tree", recording)
            out = SpeculativeGenerator(target, head, draft_tree="5,3,3").generate(
                torch.tensor([[2, 5, 3, 9]]), 24, eos_token_id=[])
        return out.sequences, drafted

    early, early_trees = run()
    with monkeypatch.context() as patch:
        patch.setattr(tree_module, "_selection_is_final", lambda *args: False)
        full, full_trees = run()
    assert early.tolist() == full.tolist() == hf_greedy(target, torch.tensor([[2, 5, 3, 9]]), 24).tolist()
    assert [t[:2] for t in early_trees] == [t[:2] for t in full_trees]  # the same nodes, step by step
    assert all(t[2] == 5 for t in full_trees) and min(t[2] for t in early_trees) < 5  # fewer head calls


def test_the_selection_is_final_once_the_held_nodes_beat_every_frontier_node():
    from specdistill.serve.tree import _selection_is_final
    scores = torch.tensor([[-0.1, -0.2, -0.3, -0.5, -0.6, -0.9]])  # candidates so far (path log-probs)
    assert _selection_is_final(scores, torch.tensor([[3, 4, 5]]), 3)  # the 3rd best, -0.3, beats -0.5
    assert _selection_is_final(scores, torch.tensor([[3, 4, 5]]), 4)  # a child of -0.5 at best ties, and loses
    assert not _selection_is_final(scores, torch.tensor([[3, 4, 5]]), 5)  # -0.5's children could beat -0.6
    assert not _selection_is_final(scores, torch.tensor([[1, 4, 5]]), 3)  # -0.2's children could enter
    assert not _selection_is_final(scores[:, :2], torch.tensor([[0, 1]]), 3)  # fewer candidates than nodes
