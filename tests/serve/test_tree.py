"""Draft trees by hand: which nodes are kept, how they hang together, and the greedy walk."""

import torch
from specdistill.serve.tree import DraftTree, _select, accept_tree, add_branches


def _two_level_tree(nodes: int):
    # The root's children 5 and 7; then 5's children 1, 2 and 7's children 3, 4 (path log-probs).
    levels = [(torch.tensor([[5, 7]]), torch.tensor([[-0.1, -1.0]]), torch.tensor([[-1, -1]])),
              (torch.tensor([[1, 2, 3, 4]]), torch.tensor([[-0.2, -2.0, -1.1, -3.0]]), torch.tensor([[0, 0, 1, 1]]))]
    return _select(levels, nodes)


def test_the_likeliest_nodes_are_kept_parents_first_with_their_ancestors():
    tree = _two_level_tree(3)  # -0.1 (5), -0.2 (5 -> 1), -1.0 (7)
    assert tree.tokens.tolist() == [[5, 7, 1]]
    assert tree.parents.tolist() == [[0, 0, 1]] and tree.depths.tolist() == [[1, 1, 2]]
    expected = [[1, 0, 0, 0], [1, 1, 0, 0], [1, 0, 1, 0], [1, 1, 0, 1]]  # root, 5, 7, 5 -> 1
    assert tree.ancestors[0].int().tolist() == expected


def test_equal_path_probabilities_keep_the_parent():
    levels = [(torch.tensor([[5, 7]]), torch.tensor([[-0.5, -1.0]]), torch.tensor([[-1, -1]])),
              (torch.tensor([[1, 2, 3, 4]]), torch.tensor([[-0.5, -3.0, -3.0, -3.0]]), torch.tensor([[0, 0, 1, 1]]))]
    tree = _select(levels, 2)  # the child (certain, -0.5 + 0) ties with its parent: both, parent first
    assert tree.tokens.tolist() == [[5, 1]] and tree.parents.tolist() == [[0, 1]]


def test_the_walk_follows_the_target_argmax_and_stops_at_the_limit():
    tree = _two_level_tree(4)  # nodes: 5, 7, 5 -> 1, 7 -> 3
    logits = torch.full((1, 5, 10), -1.0)
    for node, token in enumerate([5, 1, 3, 9, 0]):  # the target's argmax after root, 5, 7, 5 -> 1, 7 -> 3
        logits[0, node, token] = 1.0
    assert accept_tree(tree, logits, [5]) == [([1, 3], 9)]  # 5, then 1, then the target's own 9
    assert accept_tree(tree, logits, [1]) == [([1], 1)]  # budget for one draft: 5, then the target's 1
    logits[0, 0] = -1.0
    logits[0, 0, 6] = 1.0  # the target wants 6 after the root: no node has it
    assert accept_tree(tree, logits, [5]) == [([], 6)]


def test_a_branch_follows_the_tree_as_far_as_it_holds_its_tokens_then_hangs_below():
    tree = _two_level_tree(3)  # nodes 1: 5, 2: 7, 3: 5 -> 1
    batch = DraftTree(*(torch.cat([t, t]) for t in (tree.tokens, tree.parents, tree.depths, tree.ancestors)))
    joined = add_branches(batch, [[5, 1, 9, 4], []])  # row 0: 5 -> 1 is there; 9 and 4 hang below it
    assert joined.tokens.tolist() == [[5, 7, 1, 9, 4], [5, 7, 1, 5, 5]]  # row 1: copies of its first node
    assert joined.parents.tolist() == [[0, 0, 1, 3, 4], [0, 0, 1, 0, 0]]
    assert joined.depths.tolist() == [[1, 1, 2, 3, 4], [1, 1, 2, 1, 1]]
    assert joined.ancestors[0, 5].int().tolist() == [1, 1, 0, 1, 1, 1]  # root, 5, 5 -> 1, 9, 4
    assert joined.ancestors[1, 4].int().tolist() == [1, 0, 0, 0, 1, 0]  # a copy sees the root and itself
    logits = torch.full((2, 6, 10), -1.0)
    for node, token in enumerate([5, 1, 0, 9, 4, 2]):  # row 0's target: 5, 1, 9, 4, then its own 2
        logits[0, node, token] = 1.0
    logits[1, 0, 5] = logits[1, 1, 8] = 1.0  # row 1: 5 (node 1, not its copies), then the target's 8
    assert accept_tree(joined, logits, [8, 8]) == [([1, 3, 4, 5], 2), ([1], 8)]
    assert add_branches(batch, [[], []]) is batch
