"""Draft trees (EAGLE-2's dynamic trees) for a feature-conditioned draft head, greedy rows.

A chain drafts one guess per position; at a per-position acceptance near 0.65 its τ stays
under 1 / (1 - 0.65) ≈ 2.9 however long it is. A tree keeps several guesses:

    draft   level by level, the ``top_k`` likeliest nodes of the newest level (by the draft's
            probability of the whole path) each propose their ``top_k`` likeliest next tokens,
            ``depth`` levels deep, one batched head call per level, stopping early once no
            deeper node could enter the selection (``_selection_is_final``: the same tree)
    select  the ``nodes`` best of all proposed nodes by path probability (a child is never
            likelier than its parent, so the selection holds every selected node's parents)
    verify  the target scores the row's last token and every node in ONE forward, each node
            attending only to its ancestors (``LlamaRunner.forward_tree``)
    accept  from the root, follow the child whose token is the target's argmax; the argmax
            where the walk stops is the next token. The output is the target's greedy one.

The path's cache entries are then moved into place (``keep_path``) and its features go to
the head, as after a chain. Sampling rows use the chain (their lossless rule is per draft).

Candidates that need no model, the continuation of the row's last n-gram earlier in its text
(``model_free.RetrievalBranch``), join the tree as one more branch (``add_branches``) before
the verification: the same pass then checks what the head guessed and what the text repeats.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from specdistill.serve.decode import clocked, right_padded
from specdistill.serve.sampling import argmax


@dataclass(frozen=True)
class TreeShape:
    # The default ("auto"): on the broad held-out set (prompts 6-10 of each task, the tree on every step)
    # 5,8,12 accepted τ 2.88 against 5,3,10's 2.73 for ~2 more verified tokens, and as served it was
    # 1.01-1.05x as fast (bench/results/2026-12-06-s22): wider levels catch the heads' near misses.
    depth: int = 5  # levels below the last token (a step accepts at most min(depth, nodes) drafts)
    top_k: int = 8  # children per expanded node, and nodes expanded per level
    nodes: int = 12  # nodes verified per step

    def __post_init__(self):
        if self.depth < 1 or self.top_k < 1 or self.nodes < 1:
            raise ValueError(f"a draft tree needs depth, top_k and nodes >= 1, got {self}")
        if self.nodes > self.candidates:
            raise ValueError(f"a tree of depth {self.depth} and top_k {self.top_k} proposes {self.candidates} "
                             f"nodes; nodes = {self.nodes} is more")

    def __str__(self) -> str:
        return f"{self.depth},{self.top_k},{self.nodes}"  # what ``parse`` reads

    @property
    def candidates(self) -> int:
        return self.top_k + (self.depth - 1) * self.top_k ** 2

    @classmethod
    def parse(cls, spec: str | TreeShape | None, head: bool = True) -> TreeShape | None:
        """``"DEPTH,TOP_K,NODES"`` (e.g. ``"5,3,10"``); "", "none" or None for no tree (a chain);
        "auto" for this default tree when the draft is a head (``head``), else a chain."""
        if spec is None or isinstance(spec, TreeShape):
            return spec
        if str(spec).strip() in ("", "none"):
            return None
        if str(spec).strip() == "auto":
            return cls() if head else None
        if not re.fullmatch(r"\s*\d+\s*,\s*\d+\s*,\s*\d+\s*", str(spec)):
            raise ValueError(f"a draft tree is DEPTH,TOP_K,NODES (e.g. 5,3,10), auto or none; got {spec!r}")
        return cls(*(int(part) for part in str(spec).split(",")))


@dataclass
class DraftTree:
    """Per row, the selected nodes in an order that puts parents first; node 0 is the root
    (the row's last token), so a node's index in the verification input is i + 1."""

    tokens: torch.Tensor  # [B, N]
    parents: torch.Tensor  # [B, N]: the parent's index in 0..N (0 = root)
    depths: torch.Tensor  # [B, N]: 1 for the root's children
    ancestors: torch.Tensor  # [B, N + 1, N + 1]: j is i or an ancestor of i (root included)


def root_logits(runner, state, rows, device) -> torch.Tensor | None:
    """The head's first call of a tree: it takes each row's waiting tokens and features and gives
    the logits [B, V] at the root (the row's last token); None when a row has nothing to draft from."""
    pending = [row.tokens[held:] for row, held in zip(rows, state.lengths)]
    if not all(pending):
        return None
    inputs = right_padded(pending, max(map(len, pending)), device)
    logits = runner.forward(state, inputs, [len(p) - 1 for p in pending])
    runner.rollback(state, [len(row.tokens) for row in rows])  # the right-padding
    return logits


def draft_tree(runner, state, rows, shape: TreeShape, device) -> tuple[DraftTree | None, int]:
    """The head's tree for each row (None when it has nothing to draft from) and the number of head
    calls: fewer than ``shape.depth`` when the deeper levels could not enter the selection
    (``_selection_is_final``). The caller clocks the whole call: the head's logits and the tree's
    bookkeeping cost as much as its layer."""
    logits = root_logits(runner, state, rows, device)
    if logits is None:
        return None, 0
    head, k = runner.head, shape.top_k
    scores, tokens = logits.float().log_softmax(-1).topk(k, dim=-1)  # level 1: the root's children
    batch, fed = len(rows), torch.zeros(len(rows), 0, 0, dtype=torch.bool, device=device)
    levels = [(tokens, scores, torch.full_like(tokens, -1))]  # (tokens, path log-prob, parent's candidate index)
    frontier = torch.arange(k, device=device).expand(batch, k)  # candidate indices fed next
    features, parent_slots = state.last[:, None].expand(-1, k, -1), torch.full((batch, k), -1, device=device)
    calls = 1
    for depth in range(1, shape.depth):
        count = sum(level[0].shape[1] for level in levels)
        all_tokens, all_scores = (torch.cat([level[i] for level in levels], 1) for i in (0, 1))
        if _selection_is_final(all_scores, frontier, shape.nodes):
            break
        fed = _grow_ancestors(fed, parent_slots)
        start = fed.shape[1] - k
        out = runner.forward_tree(state, all_tokens.gather(1, frontier), features, depth, start, fed[:, start:])
        child_scores, child_index = head.logits(out).float().log_softmax(-1).topk(k, dim=-1)  # [B, k, k]
        child_scores = (all_scores.gather(1, frontier)[:, :, None] + child_scores).flatten(1)
        child_tokens = head.draft_ids[child_index].flatten(1)
        parents = frontier[:, :, None].expand(-1, -1, k).flatten(1)
        levels.append((child_tokens, child_scores, parents))
        best = child_scores.topk(k, dim=-1).indices  # the next level's frontier, among these children
        frontier = count + best
        features = out.gather(1, (best // k)[:, :, None].expand(-1, -1, out.shape[-1]))
        parent_slots = start + best // k
        calls += 1
    return _select(levels, shape.nodes), calls


def _selection_is_final(scores: torch.Tensor, frontier: torch.Tensor, nodes: int) -> bool:
    """Whether no deeper level could change any row's selection: a node's path probability is at most
    its parent's, so once every row's ``nodes``-th best candidate is at least as likely as its likeliest
    frontier node, every descendant would lose to the candidates held (ties go to the earlier one), and
    the head's further calls would be spent on nodes ``_select`` drops. Exact: the tree is the same."""
    if scores.shape[1] < nodes:
        return False
    held = scores.topk(nodes, dim=-1).values[:, -1]
    return bool((scores.gather(1, frontier).max(-1).values <= held).all())


def _grow_ancestors(fed: torch.Tensor, parent_slots: torch.Tensor) -> torch.Tensor:
    """The fed nodes' ancestor-or-self matrix [B, F, F] with a new level whose parents are
    the fed nodes ``parent_slots`` [B, k] (-1: the root, which is not a tree slot)."""
    batch, old, k = fed.shape[0], fed.shape[1], parent_slots.shape[1]
    grown = torch.zeros(batch, old + k, old + k, dtype=torch.bool, device=fed.device)
    grown[:, :old, :old] = fed
    if old:
        rows = torch.arange(batch, device=fed.device)[:, None]
        inherited = fed[rows, parent_slots.clamp(min=0)] & (parent_slots >= 0)[:, :, None]  # [B, k, old]
        grown[:, old:, :old] = inherited
    grown[:, old:, old:] = torch.eye(k, dtype=torch.bool, device=fed.device)
    return grown


def _select(levels, nodes: int) -> DraftTree:
    """The ``nodes`` likeliest candidates per row, in candidate order (parents first)."""
    tokens, scores, parents = (torch.cat([level[i] for level in levels], 1) for i in range(3))
    depths = torch.cat([torch.full_like(level[0], d + 1) for d, level in enumerate(levels)], 1)
    # A stable sort keeps a parent ahead of a child of equal probability (lower candidate index).
    chosen = scores.sort(dim=-1, descending=True, stable=True).indices[:, :nodes].sort(dim=-1).values
    batch, device = tokens.shape[0], tokens.device
    position = torch.zeros_like(tokens)  # candidate index -> node index (1..N), 0 where not chosen
    position.scatter_(1, chosen, torch.arange(1, nodes + 1, device=device).expand(batch, -1))
    chosen_parents = parents.gather(1, chosen)
    node_parents = torch.where(chosen_parents < 0, 0, position.gather(1, chosen_parents.clamp(min=0)))
    return DraftTree(tokens.gather(1, chosen), node_parents, depths.gather(1, chosen), _ancestors(node_parents))


def _ancestors(parents: torch.Tensor) -> torch.Tensor:
    """The ancestor-or-self matrix [B, N + 1, N + 1] (root included) of nodes whose parents [B, N]
    come before them (0 = the root)."""
    batch, nodes = parents.shape
    ancestors = torch.zeros(batch, nodes + 1, nodes + 1, dtype=torch.bool, device=parents.device)
    ancestors[:, 0, 0] = True
    rows = torch.arange(batch, device=parents.device)
    for i in range(1, nodes + 1):
        ancestors[:, i] = ancestors[rows, parents[:, i - 1]]
        ancestors[:, i, i] = True
    return ancestors


def _children(parents: list[int], tokens: list[int]) -> dict[tuple[int, int], int]:
    """One row's (parent node, token) -> node index (1..N); of repeated pairs, the first node."""
    children = {}
    for i, pair in enumerate(zip(parents, tokens), start=1):
        children.setdefault(pair, i)
    return children


def add_branches(tree: DraftTree, branches: list[list[int]]) -> DraftTree:
    """The tree with each row's ``branches[b]`` (a chain of tokens after the root, e.g. retrieved
    from the row's text) joined to it: the branch follows the tree's nodes as far as they hold its
    tokens, and the rest hangs below the last one reached, so no path is verified twice. Rows that
    gained fewer nodes are padded with copies of their first node, which the walk never enters
    (``accept_tree`` takes the first node of a (parent, token) pair)."""
    if not any(branches):
        return tree
    tokens, parents, depths = tree.tokens.tolist(), tree.parents.tolist(), tree.depths.tolist()
    for b, branch in enumerate(branches):
        children = _children(parents[b], tokens[b])
        node = 0
        for token in branch:
            if (node, token) not in children:
                tokens[b].append(token)
                parents[b].append(node)
                depths[b].append(depths[b][node - 1] + 1 if node else 1)
                children[(node, token)] = len(tokens[b])
            node = children[(node, token)]
    width = max(map(len, tokens))
    for row_tokens, row_parents, row_depths in zip(tokens, parents, depths):
        pad = width - len(row_tokens)
        row_tokens += row_tokens[:1] * pad
        row_parents += [0] * pad
        row_depths += [1] * pad
    device = tree.tokens.device
    tokens, parents, depths = (torch.tensor(x, device=device, dtype=tree.tokens.dtype) for x in (tokens, parents,
                                                                                                  depths))
    return DraftTree(tokens, parents, depths, _ancestors(parents))


def verify_tree(runner, state, rows, tree: DraftTree, hidden_layers=None):
    """The target's logits [B, N + 1, V] at the root and every node (with ``hidden_layers``:
    and their features), the seconds of the one forward, and the first tree slot."""
    last = torch.tensor([[row.tokens[-1]] for row in rows], device=tree.tokens.device)
    depths = torch.cat([torch.zeros_like(last), tree.depths], dim=1)
    base = max(state.lengths)  # where forward_tree writes the nodes of every row
    out, seconds = clocked(runner.forward_tree, state, torch.cat([last, tree.tokens], 1), depths, tree.ancestors,
                           hidden_layers)
    return out, seconds, base


def accept_tree(tree: DraftTree, target_logits: torch.Tensor, limits: list[int]) -> list[tuple[list[int], int]]:
    """Per row, (the accepted path's node indices, root excluded, at most ``limits[b]`` long;
    the next token): the walk from the root along the target's argmax."""
    choice = argmax(target_logits).tolist()  # [B][N + 1]
    tokens, parents = tree.tokens.tolist(), tree.parents.tolist()
    results = []
    for b, limit in enumerate(limits):
        children = _children(parents[b], tokens[b])
        path, node = [], 0
        while len(path) < limit and (child := children.get((node, choice[b][node]))) is not None:
            path.append(child)
            node = child
        results.append((path, choice[b][node]))
    return results
