"""Draft trees for sampled rows, verified exactly: recursive rejection sampling over siblings.

A greedy row may verify any tree (``tree.py``): the walk follows the target's argmax. A sampled
row must come out distributed as the warped target p, so its tree is drafted and checked by a
rule with a proof (SpecInfer's multi-step speculative sampling, with siblings drawn without
replacement as in Recursive Speculative Decoding, Jeon et al. 2024):

    draft   at a node v the head's warped distribution q_v gives v's children x_1, x_2, ...
            drawn one after another without replacement (``sampling.draw_distinct``);
            ``mode="top"`` takes the m likeliest instead.
    verify  the target scores every node in one pass, as for greedy trees.
    accept  at v, with r = p_v: for i = 1, 2, ...: accept x_i with probability
            min(1, r(x_i) / q_i(x_i)) and move to x_i; on rejection r <- norm(max(0, r - q_i)).
            Here q_1 = q_v and q_{i+1} is q_i without x_i, renormalized ("sample"), or
            q_i = one-hot(x_i) ("top"). When every child is rejected (or v is a leaf, or the row's
            limit is reached) the next token is drawn from r.

Why the output is p at every node (proof sketch): one stage is ordinary speculative sampling
with target r and draft q_i, which outputs r exactly whatever q_i is, provided x_i ~ q_i given
everything before it. Unrolled from the last stage: if stage i + 1 outputs r_{i+1} =
norm(max(0, r_i - q_i)), stage i outputs min(r_i, q_i) + (1 - sum min(r_i, q_i)) r_{i+1} = r_i.
So the node outputs r_1 = p_v, and by induction along the accepted path every token follows
the target given the ones before it. Two conditions keep x_i ~ q_i: (1) q_i is the distribution
x_i was drawn from (the residual uses it, not q_v), and (2) whether a node exists may not depend
on its own token. Pruning a dynamic tree by its nodes' probabilities (EAGLE-2's selection)
breaks (2), so sampled rows use a fixed topology (as in Sequoia): node j is "the i-th draw at
its parent", and which nodes exist is decided before anything is drawn. The topology
(``sampled_topology``) is the best ``nodes`` of such positions for given acceptance rates.

A head with a draft vocabulary (an EAGLE-3 head's 8-9k of the target's 49k tokens) has q = 0 outside
it, so q is kept, warped and drawn from over that vocabulary only (``SampledTree.vocab``), and a
rejection subtracts it from the residual at those ids: the same numbers as over the whole vocabulary,
at a fifth of the cost of every operation on q.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass

import torch
from specdistill.serve.sampling import argmax, draw, draw_distinct, warp_rows
from specdistill.serve.tree import DraftTree, TreeShape, _ancestors, _grow_ancestors, root_logits

from specdistill.models.loading import native_bf16

# The chance that a node's i-th drawn child is accepted once the ones before it were rejected,
# from sampled chat at T = 0.7 with the shipped head (first child ~0.6); later ones are guesses
# that only shape the topology, never the output.
SIBLING_ACCEPTANCE = (0.6, 0.3, 0.2, 0.15, 0.1)
MODES = ("sample", "top")
# A sampled row's tree is sized by what verifying its nodes costs (bench/RESULTS.md, "Trees for sampled
# requests"). Where that is cheap (a GPU, or a CPU with bf16 instructions, whose linears take AMX from 4
# tokens) the greedy tree's size: on a 2-vCPU Xeon at T = 0.7, 5,3,10 accepted tau 2.73 against 4,2,6's
# 2.56 and drafted as fast as the chain or faster. Where bf16 is emulated (AVX2 CPUs), or the target runs
# in fp32 on a CPU, a smaller one: on 2 EPYC cores 4,2,6 drafted 44-47 tok/s against the chain's 43 and
# 5,3,10's 35.
SAMPLED_TREE = "auto"
WIDE_SAMPLED_TREE, NARROW_SAMPLED_TREE = "5,3,10", "4,2,6"


def check_tree_sampling(how: str) -> str:
    """``draft_tree_sampling``: a drafting mode, or "chain" (sampled rows draft a chain)."""
    if how not in (*MODES, "chain"):
        raise ValueError(f"draft_tree_sampling must be one of {(*MODES, 'chain')}, got {how!r}")
    return how


@dataclass(frozen=True)
class Topology:
    """A fixed tree: node j (1..N, parents first) is the ``ranks[j-1]``-th draw (0-based) at its
    parent ``parents[j-1]`` (0 = the root, the row's last token), ``depths[j-1]`` below the root."""

    parents: tuple[int, ...]
    ranks: tuple[int, ...]
    depths: tuple[int, ...]

    @property
    def nodes(self) -> int:
        return len(self.parents)

    @property
    def depth(self) -> int:
        return max(self.depths)

    def children(self, node: int) -> list[int]:
        """The node's children, in draw order."""
        return [j for j, parent in enumerate(self.parents, start=1) if parent == node]


def check_sampled_tree(spec: TreeShape | str) -> TreeShape | str:
    """``spec`` if it names a sampled row's tree (``DEPTH,TOP_K,NODES``, a ``TreeShape`` or "auto")."""
    if str(spec).strip() != "auto" and TreeShape.parse(spec) is None:
        raise ValueError(f"a sampled tree is DEPTH,TOP_K,NODES (e.g. 4,2,6) or auto, got {spec!r}")
    return spec


def sampled_tree_shape(spec: TreeShape | str, weight: torch.Tensor) -> TreeShape:
    """A sampled row's tree size: ``spec``, or for "auto" the one that suits where ``weight`` (one of the
    target's parameters) lives: wide on a GPU or in bf16 on a CPU with bf16 instructions, else narrow."""
    if str(check_sampled_tree(spec)).strip() != "auto":
        return TreeShape.parse(spec)
    cheap = weight.device.type != "cpu" or (weight.dtype == torch.bfloat16 and native_bf16(weight.device))
    return TreeShape.parse(WIDE_SAMPLED_TREE if cheap else NARROW_SAMPLED_TREE)


def sampled_topology(shape: TreeShape, acceptance=SIBLING_ACCEPTANCE) -> Topology:
    """The ``shape.nodes`` positions (at most ``shape.depth`` deep, ``shape.top_k`` draws per node)
    with the highest chance of being reached and accepted, when the i-th draw at a node is
    accepted with ``acceptance[i]`` after the ones before it were rejected. Grown best first,
    so parents come before children and a node's draws keep their order."""
    rates = [acceptance[min(i, len(acceptance) - 1)] for i in range(shape.top_k)]
    # The chance that draw i is the accepted one: the ones before it rejected, it accepted.
    share = [rate * math.prod(1 - r for r in rates[:i]) for i, rate in enumerate(rates)]
    parents, ranks, depths, value = [], [], [], [1.0]
    heap = [(-share[0], 0, 0, 0, 1)]  # (-value, order, parent, rank, depth)
    order = 1
    while heap and len(parents) < shape.nodes:
        negative, _, parent, rank, depth = heapq.heappop(heap)
        parents.append(parent), ranks.append(rank), depths.append(depth), value.append(-negative)
        node = len(parents)
        if rank + 1 < shape.top_k:  # the next draw at the same parent
            heapq.heappush(heap, (-value[parent] * share[rank + 1], order, parent, rank + 1, depth))
            order += 1
        if depth < shape.depth:  # the node's first draw
            heapq.heappush(heap, (-value[node] * share[0], order, node, 0, depth + 1))
            order += 1
    return Topology(tuple(parents), tuple(ranks), tuple(depths))


@dataclass
class SampledTree:
    """A drafted tree (``tree``, as the target verifies it) and what its acceptance needs: the
    warped draft distribution at each node with children (``q[node]``: [B, V], or [B, V_draft] over
    the target ids ``vocab``), which drawn nodes exist (``valid`` [B, N]: a draw past the support of
    q did not happen) and, with a ``vocab``, each node's index into it (``picks`` [B, N])."""

    tree: DraftTree
    topology: Topology
    q: dict[int, torch.Tensor]
    valid: torch.Tensor
    mode: str
    vocab: torch.Tensor | None = None
    picks: torch.Tensor | None = None


def draft_sampled_tree(runner, state, rows, topology: Topology, mode: str, device):
    """Each row's tree of the fixed ``topology``: sampled rows draw children from the head's
    warped q (``mode``), greedy rows take the likeliest. Returns (SampledTree | None, head calls); None
    when the head has nothing to draft from. The caller clocks the whole call."""
    if mode not in MODES:
        raise ValueError(f"a sampled tree drafts by {MODES}, got {mode!r}")
    logits = root_logits(runner, state, rows, device)
    if logits is None:
        return None, 0
    batch, nodes = len(rows), topology.nodes
    vocab = runner.head.draft_ids  # q is kept over these target ids (module doc)
    tokens = torch.zeros(batch, nodes, dtype=torch.long, device=device)
    picks = torch.zeros_like(tokens)
    valid = torch.ones(batch, nodes, dtype=torch.bool, device=device)
    q, head_state = {}, {0: state.last}  # head state at each fed node (0: the root)
    fed, slot_of = torch.zeros(batch, 0, 0, dtype=torch.bool, device=device), {}
    calls = 1
    for depth in range(topology.depth):
        expanding = [v for v in ([0] if depth == 0 else _at_depth(topology, depth)) if topology.children(v)]
        if depth > 0:  # feed the expanding nodes to the head: their states and next-token logits
            if not expanding:
                break
            parent_slots = torch.tensor([slot_of.get(topology.parents[v - 1], -1) for v in expanding],
                                        device=device).expand(batch, -1)
            fed = _grow_ancestors(fed, parent_slots)
            start = fed.shape[1] - len(expanding)
            features = torch.stack([head_state[topology.parents[v - 1]] for v in expanding], 1)
            out = runner.forward_tree(state, tokens[:, [v - 1 for v in expanding]], features, depth, start,
                                      fed[:, start:])
            calls += 1
            for i, v in enumerate(expanding):
                slot_of[v], head_state[v] = start + i, out[:, i]
            logits = runner.head.logits(out)  # [B, E, V_draft]
        else:
            logits = logits[:, vocab][:, None]
        _draw_children(rows, topology, expanding, logits, mode, tokens, valid, q, vocab, picks)
    depths = torch.tensor(topology.depths, device=device).expand(batch, -1)
    parents = torch.tensor(topology.parents, device=device).expand(batch, -1)
    tree = DraftTree(tokens, parents, depths, _ancestors(parents))
    return SampledTree(tree, topology, q, valid, mode, vocab, picks), calls


def _at_depth(topology: Topology, depth: int) -> list[int]:
    return [j for j, d in enumerate(topology.depths, start=1) if d == depth]


def _draw_children(rows, topology: Topology, expanding: list[int], logits, mode: str, tokens, valid, q,
                   vocab: torch.Tensor | None = None, picks: torch.Tensor | None = None) -> None:
    """Fill in the children of the ``expanding`` nodes (their logits [B, E, V]) for every row. With a
    ``vocab``, the logits are over those target ids, and ``picks`` gets each child's index into it."""
    params = [row.params for row in rows]
    probs = warp_rows(logits, params)  # [B, E, V]; None when every row is greedy
    most = max(len(topology.children(v)) for v in expanding)
    for b, row in enumerate(rows):
        if row.params.greedy or mode == "top":  # the likeliest (within the warped support)
            keys = logits[b].float() if row.params.greedy else probs[b].log()
            order = keys.topk(most, dim=-1)
            # A key of -inf is outside the support: that draw did not happen.
            choices = [[index for index, key in zip(indices, values) if key > float("-inf")]
                       for indices, values in zip(order.indices.tolist(), order.values.tolist())]
        else:  # drawn one after another from q without replacement
            choices = [draw_distinct(probs[b, e], most, row.generator) for e in range(len(expanding))]
        for e, v in enumerate(expanding):
            for rank, child in enumerate(topology.children(v)):
                # A draw past q's support (top-k / top-p) did not happen; nor did any below a missing node.
                exists = rank < len(choices[e]) and (v == 0 or bool(valid[b, v - 1]))
                pick = choices[e][rank] if rank < len(choices[e]) else 0
                tokens[b, child - 1] = pick if vocab is None else vocab[pick]
                if picks is not None:
                    picks[b, child - 1] = pick
                valid[b, child - 1] = exists
    if probs is not None:
        q.update((v, probs[:, e]) for e, v in enumerate(expanding))


def accept_sampled_tree(drafted: SampledTree, rows, target_logits: torch.Tensor,
                        limits: list[int]) -> list[tuple[list[int], int]]:
    """Per row, (the accepted path's node indices, root excluded, at most ``limits[b]`` long; the
    next token): greedy rows follow the target's argmax, sampled rows the rule of the module doc."""
    target_probs = warp_rows(target_logits, [row.params for row in rows])
    topology, tokens = drafted.topology, drafted.tree.tokens.tolist()
    valid = drafted.valid.tolist()
    results = []
    for b, (row, limit) in enumerate(zip(rows, limits)):
        if row.params.greedy:
            results.append(_greedy_walk(topology, tokens[b], valid[b], target_logits[b], limit))
        else:
            results.append(_sampled_walk(drafted, b, tokens[b], valid[b], target_probs[b], limit, row.generator))
    return results


def _greedy_walk(topology: Topology, tokens: list[int], valid: list[bool], logits, limit: int):
    choice = argmax(logits).tolist()
    path, node = [], 0
    while len(path) < limit:
        child = next((c for c in topology.children(node) if valid[c - 1] and tokens[c - 1] == choice[node]), None)
        if child is None:
            break
        path.append(child)
        node = child
    return path, choice[node]


def _sampled_walk(drafted: SampledTree, b: int, tokens: list[int], valid: list[bool], probs, limit: int,
                  generator):
    """Recursive rejection sampling from the root (see the module doc). ``draft`` (q_i) is over the
    draft vocabulary where there is one: ``picks`` index it, ``tokens`` the target's vocabulary."""
    picks = tokens if drafted.picks is None else drafted.picks[b].tolist()
    path, node = [], 0
    while True:
        residual = probs[node]
        children = [c for c in drafted.topology.children(node) if valid[c - 1]] if len(path) < limit else []
        draft = drafted.q[node][b] if children else None
        accepted = None
        for child in children:
            x, pick = tokens[child - 1], picks[child - 1]
            stage_q = float(draft[pick]) if drafted.mode == "sample" else 1.0  # "top": q_i is one-hot at x
            if torch.rand((), generator=generator, device=residual.device) * stage_q < residual[x]:
                accepted = child
                break
            if drafted.mode == "sample":
                left = _minus(residual, draft, drafted.vocab)
                draft = _normalized(draft.index_fill(0, torch.tensor([pick], device=draft.device), 0), fallback=draft)
            else:  # r - one-hot(x), clamped: r without x (r(x) <= 1)
                left = residual.index_fill(0, torch.tensor([x], device=residual.device), 0)
            residual = _normalized(left.clamp_min(0), fallback=residual)
        if accepted is None:
            return path, draw(residual, generator)
        path.append(accepted)
        node = accepted


def _minus(residual: torch.Tensor, q: torch.Tensor, vocab: torch.Tensor | None) -> torch.Tensor:
    """residual - q over the target's vocabulary, for q over the draft's ``vocab`` (or over all)."""
    return residual - q if vocab is None else residual.index_add(0, vocab, q, alpha=-1)


def _normalized(weights: torch.Tensor, fallback: torch.Tensor) -> torch.Tensor:
    total = weights.sum()
    # A zero residual means r == q there, where a rejection has probability 0: never reached.
    return weights / total if total > 0 else fallback
