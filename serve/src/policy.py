"""How many tokens to draft at each step: fixed, Hugging Face's heuristic, or cost-aware.

A policy is asked for k before each step and told afterwards what happened
(k drafted, n accepted, and the seconds the draft and the verification took).
Policies keep state across steps and across ``generate`` calls of one
generator, so what the cost-aware policy learns carries over to the next
request. They are not locked: share a generator between threads only if a
slightly racy estimate is acceptable (it never affects correctness, only k).
"""

from __future__ import annotations

import math
from typing import Protocol


class DraftLengthPolicy(Protocol):
    def next_k(self) -> int:
        """Draft tokens for the next step (the generator may lower it near the token budget)."""

    def update(self, k: int, accepted: int, draft_seconds: float, verify_seconds: float) -> None:
        """One finished step: k drafted, ``accepted`` of them accepted; seconds spent in
        the k draft forwards and in the one target forward."""

    def update_rows(self, rows: list[tuple[int, int]], k_run: int, draft_seconds: float,
                    verify_seconds: float) -> None:
        """One finished batched step: (k drafted, accepted) per row, ``k_run`` draft
        forwards and one verification shared by all rows. Called once per step."""


class FixedDraftLength:
    """Always k drafts (gpt-fast, vLLM's default)."""

    def __init__(self, k: int):
        if not isinstance(k, int) or k < 0:
            raise ValueError(f"the draft length must be an integer >= 0, got {k!r}")
        self.k = k

    def next_k(self) -> int:
        return self.k

    def update(self, k: int, accepted: int, draft_seconds: float, verify_seconds: float) -> None:
        pass

    def update_rows(self, rows, k_run: int, draft_seconds: float, verify_seconds: float) -> None:
        pass

    def __repr__(self) -> str:
        return f"FixedDraftLength({self.k})"


class HeuristicDraftLength:
    """Hugging Face's ``num_assistant_tokens_schedule="heuristic"``: +2 after a step
    whose drafts were all accepted, -1 (not below 1) otherwise. It ignores costs."""

    def __init__(self, initial: int = 5):
        if initial < 1:
            raise ValueError(f"the initial draft length must be >= 1, got {initial}")
        self.k = initial

    def next_k(self) -> int:
        return self.k

    def update(self, k: int, accepted: int, draft_seconds: float, verify_seconds: float) -> None:
        self.update_rows([(k, accepted)], k, draft_seconds, verify_seconds)

    def update_rows(self, rows, k_run: int, draft_seconds: float, verify_seconds: float) -> None:
        """Moves once per step, on the batch's verdict: +2 when most rows took every draft."""
        took_all = sum(accepted == k for k, accepted in rows)
        self.k = self.k + 2 if 2 * took_all >= len(rows) else max(1, self.k - 1)

    def __repr__(self) -> str:
        return f"HeuristicDraftLength(k={self.k})"


class CostAwareDraftLength:
    """Pick what each step drafts, maximizing expected tokens per second: a chain of k in [0, k_max]
    (``next_k``) and, for a greedy batch when a draft tree is configured, the tree or that chain
    (``use_tree``). For a batch of B rows,

        chain k:  B * E[tokens | k] / (k * t_draft + t_verify(B * (k + 1)))
        tree:     B * E_tree[tokens] / (t_tree_draft + t_verify(B * (nodes + 1)))

    with E[tokens | k] = 1 + sum_{j<=k} prod_{i<=j} a_i, where a_i is the acceptance rate of the i-th
    draft position given that it is reached (it decays with i, so one α is not enough), and E_tree the
    same over the tree's depths with b_i, the rate at which the target's walk through the tree goes one
    level deeper. t_draft is one draft forward, t_tree_draft the drafting of a whole tree, and t_verify(n)
    one target forward over n tokens in all: flat while the machine is memory-bound, growing once it is
    compute-bound (large batches, wide trees, CPUs without native bf16), interpolated between the token
    counts timed at that batch size (the draft costs too, per batch size). All are estimated online with
    exponential forgetting, so a draft that stops paying (another language, another task) is dropped
    within steps and k = 0 decodes at the target's own speed. Drafting in a batch must beat k = 0 by
    ``margin`` (costs the model leaves out fall on a batch's drafting only), and a batch times k = 0 before
    pricing it.

    Exploration comes from optimism about acceptance: a position never reached takes the estimate of the
    position before it, and the tree is tried before it is judged. Not about costs: while one token count
    has been timed, a step over fewer tokens costs what it did and one over more costs in proportion (the
    slope is unknown, and pricing it flat probed 16-row chains at a 1-row tree's cost, at 2-5 plain steps
    each). So while the tree wins, a chain step is taken after ``chain_probe_steps`` tree steps until a
    chain was timed, then once every ``tree_probe_every``. A batch size's first multi-token step is a
    chain of one, the cheapest to time. When k = 0 wins, one drafted token is tried after ``probe_every``
    steps (times the batch's rows), and a tree passed over is tried after ``tree_probe_every`` steps, so a
    draft that gets better is noticed; each gap doubles while the probes keep losing (up to 16 times), since
    a probe of a costly tree is not cheap, and a tree that could not win even if its every level were
    accepted is not probed at all. Until the tree has been verified ``tree_min_steps`` times, a tree passed
    over is tried again after ``chain_probe_steps`` steps, without doubling.
    """

    def __init__(self, k_max: int = 8, warmup_k: int = 4, prior_alpha: float = 0.6, prior_weight: float = 2.0,
                 decay: float = 0.99, probe_every: int = 16, tree_probe_every: int = 64, chain_probe_steps: int = 4,
                 margin: float = 0.1, tree_min_steps: int = 8):
        if k_max < 1:
            raise ValueError(f"k_max must be >= 1, got {k_max}")
        if not 0 < decay <= 1:
            raise ValueError(f"decay must be in (0, 1], got {decay}")
        if margin < 0:
            raise ValueError(f"margin must be >= 0, got {margin}")
        self.k_max, self.warmup_k, self.margin = k_max, min(warmup_k, k_max), margin
        self.prior_alpha, self.prior_weight, self.decay = prior_alpha, prior_weight, decay
        self.probe_every, self.tree_probe_every, self.chain_probe_steps = probe_every, tree_probe_every, \
            chain_probe_steps
        self.tree_min_steps = tree_min_steps
        self._tree_samples = 0  # tree steps verified since the draft began serving
        self.accepted_at = [0.0] * k_max  # discounted counts, like SpecStats.accepted_at
        self.reached_at = [0.0] * k_max
        self.tree_accepted_at: list[float] = []  # per tree depth, sized by the first tree step
        self.tree_reached_at: list[float] = []
        self.branch_accepted_at: list[float] = []  # per position of a retrieval branch verified on its own
        self.branch_reached_at: list[float] = []
        # (rows, tokens verified in all) -> [discounted seconds, count]
        self.verify_points: dict[tuple[int, int], list[float]] = {}
        self._curves = None  # verify_points' curves for one batch size, see _verify_curves
        # (rows, k) -> a chain's tokens/s until the next update: a step's decisions price each chain 3-4 times
        # (~30 options), which at 16 rows drafting nothing was 1% of the step.
        self._chain_prices: dict[tuple[int, int], float] = {}
        # Moving averages per batch size (rows -> seconds): a 16-row tree costs far more to draft than a
        # 1-row one, and pricing it at the 1-row cost probed 16-row trees at 10 plain steps' time each.
        self.draft_step_costs: dict[int, float] = {}  # one draft forward
        self.tree_draft_costs: dict[int, float] = {}  # drafting one tree
        self.rows = 1  # the batch size of the last step: the next one is priced for it
        self._zero_steps = self._chain_steps = self._tree_steps = 0
        self._chain_timed = False
        # A head that drafted nothing last step first reads the features it missed (the whole prompt
        # after a prefill): that step's draft time is not what drafting costs step after step.
        self._drafted_last = False
        self._zero_gap, self._tree_gap = probe_every, tree_probe_every  # steps until the next probe

    def new_draft(self) -> None:
        """A new draft serves (``SpecEngine.swap_draft``): what the old one accepted says nothing of it,
        so its acceptance starts again from the prior (and its draft costs are timed again); the target's
        verification costs stay."""
        self.accepted_at, self.reached_at = [0.0] * self.k_max, [0.0] * self.k_max
        self.tree_accepted_at, self.tree_reached_at = [], []
        self.draft_step_costs, self.tree_draft_costs = {}, {}
        self._chain_prices.clear()
        self._zero_steps = self._chain_steps = self._tree_steps = self._tree_samples = 0
        self._zero_gap, self._tree_gap = self.probe_every, self.tree_probe_every

    # ---- decisions -------------------------------------------------------------------------------

    def next_k(self) -> int:
        if self.rows > 1 and (self.rows, self.rows) not in self.verify_points:
            # Drafting nothing was never timed at this batch size: a batch of one-token rows takes the
            # target's fastest path, which a line through the chains' costs overprices (16 rows kept drafting
            # chains at 0.85x the tokens/s), and a step of the target alone costs no more than the target.
            return 0
        # Nothing measured yet at one row; a batch prices what it has (a blind chain of 4 at 16 rows cost 2-5
        # steps of the target alone).
        if self.rows == 1 and (self.draft_step_seconds is None or not self.verify_points):
            return self.warmup_k
        best = max(range(1, self.k_max + 1), key=self.tokens_per_second)
        if self.tokens_per_second(best) > self._plain_to_beat():
            self._zero_gap = self.probe_every
            # A batch whose steps of several tokens a row were never timed at its size prices them from other
            # sizes' (1-row steps say little of 16 rows'): its first such step is the cheapest, one draft.
            _, timed_here, _ = self._verify_curves()
            return best if self.rows == 1 or timed_here else 1
        self._zero_steps += 1
        # A probe after a run of steps without drafts has the head read every row's missed features: at 16
        # rows on a CPU that costs 2-4 steps of the target alone, at 1 row a fifth of one; so the gap grows
        # with the rows (the acceptance it refreshes is learned at every batch size anyway).
        if self._zero_steps < self._zero_gap * self.rows:
            return 0
        self._zero_steps, self._zero_gap = 0, min(2 * self._zero_gap, 16 * self.probe_every)
        return 1

    def use_tree(self, rows: int, depth: int, nodes: int, branches: list[int] | None = None) -> bool:
        """Whether a greedy batch of ``rows`` drafts the tree (else the chain ``next_k`` gives, or its
        rows' retrieval ``branches`` alone, of these lengths, when ``use_branch`` takes them)."""
        self.rows = rows
        if self.tree_draft_seconds is None:
            return True  # never tried: try it
        chain = self._best_to_beat()
        if branches and any(branches):
            # Branches alone cost one verification and no draft: where the text repeats they beat a tree
            # that holds them (an adapted head's better tree took the steps branches had won, at 0.86x
            # the tokens/s, on translation requests like the captured ones).
            chain = max(chain, self.branch_tokens_per_second(branches))
        if self.tree_tokens_per_second(depth, nodes) > chain:
            self._tree_gap = self.tree_probe_every
            self._tree_steps += 1
            if self._tree_steps < (self.tree_probe_every if self._chain_timed else self.chain_probe_steps):
                return True
            self._tree_steps = 0
            return False  # a chain step, so that its cost is measured and not guessed
        if self.tree_tokens_per_second(depth, nodes, every_level=True) <= chain:
            return False  # not even a tree whose every level is accepted would pay: no probe
        self._chain_steps += 1
        # A tree judged on a few steps is tried again soon: one step's walk is a coin toss, and the first
        # steps of answers are the hardest (an adapted head whose tree made τ 3.33 on translation, every
        # step, lost two of its first three and was then drafted on 3 steps of 220, at τ 1.4).
        young = self._tree_samples < self.tree_min_steps
        if self._chain_steps < (self.chain_probe_steps if young else self._tree_gap):
            return False
        self._chain_steps = 0
        if not young:
            self._tree_gap = min(2 * self._tree_gap, 16 * self.tree_probe_every)
        return True

    def use_branch(self, lengths: list[int]) -> bool:
        """Whether a greedy batch that drafts no tree verifies its rows' retrieval branches (of ``lengths``
        tokens, one per row, 0 where a row has none; no draft model run) rather than the chain ``next_k``
        gives: by expected tokens/s; a branch's positions start from the optimistic prior, so branches get
        tried."""
        self.rows = len(lengths)
        return self.branch_tokens_per_second(lengths) > self._best_to_beat()

    def branches_may_pay(self, rows: int, length: int, depth: int, nodes: int) -> bool:
        """Whether a greedy batch of ``rows`` could use retrieval branches of up to ``length`` tokens this
        step, so that they are worth looking up (~0.5 ms a row on a CPU, a fifth of a 16-row step that
        drafts nothing): the tree with them could win if its every level were accepted, or branches alone
        would if every row had one at the rates measured. No side effects (``use_tree`` probes)."""
        self.rows = rows
        if self.tree_draft_seconds is None:
            return True  # the tree was never tried: it will be, with its branches
        chain = self._best_to_beat()
        return (self.tree_tokens_per_second(max(depth, length), nodes + length, every_level=True) > chain
                or self.branch_tokens_per_second([length] * rows) > chain)

    def _plain_to_beat(self) -> float:
        """What drafting must beat: drafting nothing, by ``margin`` in a batch. The model leaves out costs
        that fall on a batch's drafting only (rows that finish apart leave part-empty batches and admit new
        requests in small prefills; the head reads every row's missed features after steps without drafts),
        and at 16 rows on a CPU a chain priced even with drafting nothing ran at 0.85x its tokens/s. One row
        has none of these, and a margin there cost the tree its share on translation."""
        return (1 + (self.margin if self.rows > 1 else 0.0)) * self.tokens_per_second(0)

    def _best_to_beat(self) -> float:
        """What a tree or retrieval branches must beat: the best chain, or drafting nothing by ``margin``."""
        return max(self._plain_to_beat(), *(self.tokens_per_second(k) for k in range(1, self.k_max + 1)))

    # ---- what happened ---------------------------------------------------------------------------

    def update(self, k: int, accepted: int, draft_seconds: float, verify_seconds: float) -> None:
        self.update_rows([(k, accepted)], k, draft_seconds, verify_seconds)

    def update_rows(self, rows: list[tuple[int, int]], k_run: int, draft_seconds: float,
                    verify_seconds: float) -> None:
        """One batched step: (k drafted, accepted) per row; ``k_run`` draft forwards and one
        verification of k_run + 1 tokens per row were shared by all rows. Forgets once per step."""
        self._forget()
        for k, accepted in rows:
            _count(self.accepted_at, self.reached_at, min(k, self.k_max), accepted)
        k = min(k_run, self.k_max)
        self.rows, self._chain_timed = len(rows), True
        self._time_verify(len(rows) * (k_run + 1), verify_seconds)
        if k > 0 and self._drafted_last:
            self.draft_step_costs[self.rows] = _average(self.draft_step_costs.get(self.rows), draft_seconds / k)
        self._drafted_last = k > 0

    def update_tree(self, accepted: list[int], depth: int, nodes: int, draft_seconds: float,
                    verify_seconds: float) -> None:
        """One tree step: the accepted path length per row, for a tree ``depth`` levels deep whose
        ``nodes`` drafted tokens (plus each row's last token) were verified in one pass."""
        self._forget()
        _grow(self.tree_accepted_at, self.tree_reached_at, depth)
        for n in accepted:
            _count(self.tree_accepted_at, self.tree_reached_at, depth, n)
        self.rows = len(accepted)
        self._tree_samples += 1
        self._time_verify(len(accepted) * (nodes + 1), verify_seconds)
        if self._drafted_last:
            self.tree_draft_costs[self.rows] = _average(self.tree_draft_costs.get(self.rows), draft_seconds)
        self._drafted_last = True

    def update_branch(self, rows: list[tuple[int, int]], verify_seconds: float, width: int) -> None:
        """One step that verified retrieval branches alone: (branch length, accepted) per row, ``width``
        tokens past each row's last one in the pass."""
        self._forget()
        _grow(self.branch_accepted_at, self.branch_reached_at, width)
        for length, accepted in rows:
            _count(self.branch_accepted_at, self.branch_reached_at, length, accepted)
        self.rows = len(rows)
        self._time_verify(len(rows) * (width + 1), verify_seconds)
        self._drafted_last = False  # the head drafted nothing: its next call catches up

    def _forget(self) -> None:
        self._curves = None
        self._chain_prices.clear()
        for counts in (self.accepted_at, self.reached_at, self.tree_accepted_at, self.tree_reached_at,
                       self.branch_accepted_at, self.branch_reached_at):
            counts[:] = [c * self.decay for c in counts]
        for key, point in list(self.verify_points.items()):
            point[0] *= self.decay
            point[1] *= self.decay
            if point[1] < 1e-3:  # a batch size and token count not timed for a long while
                del self.verify_points[key]

    def _time_verify(self, tokens: int, seconds: float) -> None:
        self._curves = None
        point = self.verify_points.setdefault((self.rows, tokens), [0.0, 0.0])
        point[0] += seconds
        point[1] += 1

    # ---- the model -------------------------------------------------------------------------------

    def acceptance(self) -> list[float]:
        """Estimated acceptance rate a_i at each draft position, i < k_max."""
        return _rates(self.accepted_at, self.reached_at, self.prior_alpha, self.prior_weight)

    def tree_acceptance(self, depth: int) -> list[float]:
        """Estimated rate b_i at which the walk through a tree goes one level deeper, per depth."""
        # Before a tree is measured its levels take the chain's rates: a tree holds the chain's path.
        prior = self.acceptance()[0] if self.k_max else self.prior_alpha
        return _rates_to(self.tree_accepted_at, self.tree_reached_at, prior, self.prior_weight, depth)

    @property
    def draft_step_seconds(self) -> float | None:
        """One draft forward at the current batch size (None until one was timed)."""
        return _at_rows(self.draft_step_costs, self.rows)

    @property
    def tree_draft_seconds(self) -> float | None:
        """Drafting one tree at the current batch size (None until one was timed)."""
        return _at_rows(self.tree_draft_costs, self.rows)

    def expected_tokens(self, k: int) -> float:
        """Expected tokens from one step with k drafts (accepted drafts + the target's token)."""
        return _expected(self.acceptance()[:k])

    def verify_seconds(self, tokens: int) -> float:
        """t_verify over ``tokens`` tokens in all for a batch of ``self.rows``. A step of one token a row
        (drafting nothing) is priced from such steps alone, at this batch size or between the sizes timed:
        on a CPU it takes the target's one-token path, at a third of the time of 8 rows of two, and priced
        with the rest a 16-row batch kept drafting chains at 0.85x the tokens/s of drafting none. Other steps
        from this batch size's times: linear between the two nearest token counts timed (their mean times),
        beyond them along the slope of a weighted least-squares line over its counts (never falling with more
        tokens); one count timed at this size takes the slope of all sizes' counts pooled; none, all sizes'
        counts pooled. Where a curve has one count, more tokens cost in proportion (``_on_curve``)."""
        one_token, own, pooled = self._verify_curves()
        if tokens == self.rows and one_token:
            return _on_curve(one_token, self.rows)
        if len(own) == 1 and len(pooled) > 1:
            n, t, _ = own[0]
            return max(t + _slope(pooled) * (tokens - n), 1e-9)
        return _on_curve(own or pooled or one_token, tokens)  # one token a row: its rows are its tokens

    def _verify_curves(self):
        """(rows, seconds, weight) of one-token-a-row steps; (tokens, seconds, weight) of this batch size's
        other steps, and of all sizes' pooled by tokens; sorted, and kept until the next step's update (a
        decision prices ~30 options)."""
        if self._curves is None or self._curves[0] != self.rows:
            timed = [(rows, n, s, c) for (rows, n), (s, c) in self.verify_points.items() if c > 1e-3]
            one_token = sorted((rows, s / c, c) for rows, n, s, c in timed if n == rows)
            own = sorted((n, s / c, c) for rows, n, s, c in timed if rows == self.rows and n > rows)
            pooled: dict[int, list[float]] = {}
            for rows, n, s, c in timed:
                if n > rows:
                    point = pooled.setdefault(n, [0.0, 0.0])
                    point[0], point[1] = point[0] + s, point[1] + c
            self._curves = (self.rows, one_token, own, sorted((n, s / c, c) for n, (s, c) in pooled.items()))
        return self._curves[1:]

    def tokens_per_second(self, k: int) -> float:
        """Expected tokens per second of the batch drafting a chain of k."""
        price = self._chain_prices.get((self.rows, k))
        if price is None:
            seconds = k * (self.draft_step_seconds or 0.0) + self.verify_seconds(self.rows * (k + 1))
            price = self.rows * self.expected_tokens(k) / seconds if seconds > 0 else math.inf
            self._chain_prices[self.rows, k] = price
        return price

    def tree_tokens_per_second(self, depth: int, nodes: int, every_level: bool = False) -> float:
        """Expected tokens per second of the batch drafting a tree (``every_level``: if its walk always
        went to the bottom, an upper bound)."""
        seconds = (self.tree_draft_seconds or 0.0) + self.verify_seconds(self.rows * (nodes + 1))
        tokens = depth + 1 if every_level else _expected(self.tree_acceptance(depth))
        return self.rows * tokens / seconds

    def branch_tokens_per_second(self, lengths: list[int]) -> float:
        """Expected tokens per second of a batch verifying its rows' retrieval branches of ``lengths`` alone.
        Each row is priced by its own branch: the rates are measured over rows that had one, so a row without
        one yields its one token, however well the others' branches do (pricing every row at the longest
        branch chose branch steps over the head's chain at 4 rows, for 0.7x its tokens/s)."""
        width = max(lengths)
        rates = _rates_to(self.branch_accepted_at, self.branch_reached_at, self.prior_alpha, self.prior_weight, width)
        tokens = sum(_expected(rates[:length]) for length in lengths)
        return tokens / self.verify_seconds(len(lengths) * (width + 1))

    def __repr__(self) -> str:
        return f"CostAwareDraftLength(k_max={self.k_max})"


def _on_curve(points: list[tuple[int, float, float]], tokens: int) -> float:
    """The seconds at ``tokens`` on sorted (tokens, seconds, weight) points: linear between the nearest two,
    beyond them along ``_slope``'s line; with one point, its seconds below it and in proportion above it
    (1e-9 when there are none)."""
    if not points:
        return 1e-9  # nothing timed yet
    for (n0, t0, _), (n1, t1, _) in zip(points, points[1:]):
        if n0 <= tokens <= n1:
            return max(t0 + max(t1 - t0, 0.0) * (tokens - n0) / (n1 - n0), 1e-9)
    n, t, _ = points[0] if tokens < points[0][0] else points[-1]
    if len(points) == 1:
        # The slope is unknown: flat priced a 16-row chain of 4 (80 tokens) at a 1-row tree's 13 tokens,
        # and probed it at 2-5 plain steps' time; in proportion is what a compute-bound machine pays.
        return max(t * max(tokens, n) / n, 1e-9)
    return max(t + _slope(points) * (tokens - n), 1e-9)


def _slope(points: list[tuple[int, float, float]]) -> float:
    """The slope (>= 0) of the weighted least-squares line through (tokens, seconds, weight) points."""
    weight = sum(c for _, _, c in points)
    mean_n = sum(n * c for n, _, c in points) / weight
    mean_t = sum(t * c for _, t, c in points) / weight
    spread = sum(c * (n - mean_n) ** 2 for n, _, c in points)
    return max(sum(c * (n - mean_n) * (t - mean_t) for n, t, c in points) / spread, 0.0) if spread > 1e-9 else 0.0


def _count(accepted_at: list[float], reached_at: list[float], k: int, accepted: int) -> None:
    """One row's step: positions 1..accepted accepted, and the one after them reached (if drafted)."""
    for i in range(min(accepted, k)):
        accepted_at[i] += 1
    for i in range(min(accepted + 1, k)):
        reached_at[i] += 1


def _rates(accepted_at: list[float], reached_at: list[float], prior: float, weight: float) -> list[float]:
    """Acceptance per position, each shrunk towards the estimate of the position before it."""
    rates = []
    for accepted, reached in zip(accepted_at, reached_at):
        prior = (accepted + weight * prior) / (reached + weight)
        rates.append(prior)
    return rates


def _rates_to(accepted_at: list[float], reached_at: list[float], prior: float, weight: float,
              length: int) -> list[float]:
    """``_rates`` for exactly ``length`` positions: those never counted take the last rate (or the prior)."""
    rates = _rates(accepted_at, reached_at, prior, weight)
    return (rates + [rates[-1] if rates else prior] * length)[:length]


def _grow(accepted_at: list[float], reached_at: list[float], size: int) -> None:
    """Per-position counts sized for at least ``size`` positions (new ones at zero)."""
    for counts in (accepted_at, reached_at):
        counts += [0.0] * (size - len(counts))


def _expected(rates: list[float]) -> float:
    """1 + sum_j prod_{i<=j} rate_i: the target's own token plus the expected accepted drafts."""
    total, survive = 1.0, 1.0
    for rate in rates:
        survive *= rate
        total += survive
    return total


def _at_rows(costs: dict[int, float], rows: int) -> float | None:
    """A cost at ``rows`` from those timed at other batch sizes: linear between the nearest two; above the
    largest, along the line through them all, or in proportion to the rows while one size was timed (a
    cost per row: pessimistic, where batching amortizes, but a costly option tried at a batch it cannot pay
    at costs ten plain steps); below the smallest, that one's cost."""
    if not costs:
        return None
    if rows in costs:
        return costs[rows]
    sizes = sorted(costs)
    if rows < sizes[0]:
        return costs[sizes[0]]
    for low, high in zip(sizes, sizes[1:]):
        if low < rows < high:
            return costs[low] + (costs[high] - costs[low]) * (rows - low) / (high - low)
    top = sizes[-1]
    if len(sizes) == 1:
        return costs[top] * rows / top
    return costs[top] + _slope([(n, costs[n], 1.0) for n in sizes]) * (rows - top)


def _average(previous: float | None, value: float) -> float:
    return value if previous is None else 0.9 * previous + 0.1 * value


def make_policy(spec) -> DraftLengthPolicy:
    """A policy from ``num_draft_tokens``: an int (fixed), "auto" (cost-aware),
    "heuristic" (Hugging Face's schedule), or a policy object."""
    if isinstance(spec, bool):
        raise ValueError(f"num_draft_tokens must be an int, 'auto' or 'heuristic', got {spec!r}")
    if isinstance(spec, int):
        return FixedDraftLength(spec)
    if spec == "auto":
        return CostAwareDraftLength()
    if spec == "heuristic":
        return HeuristicDraftLength()
    if hasattr(spec, "next_k") and hasattr(spec, "update_rows"):
        return spec
    if hasattr(spec, "next_k") and hasattr(spec, "update"):
        return _OncePerStep(spec)
    raise ValueError(f"num_draft_tokens must be an int >= 0, 'auto', 'heuristic' or a DraftLengthPolicy, "
                     f"got {spec!r}")


class _OncePerStep:
    """A user policy with ``update`` only: told of each batched step once, through its
    median row (by accepted drafts), so a batch does not move it B times a step."""

    def __init__(self, policy):
        self.policy = policy

    def next_k(self) -> int:
        return self.policy.next_k()

    def update(self, k: int, accepted: int, draft_seconds: float, verify_seconds: float) -> None:
        self.policy.update(k, accepted, draft_seconds, verify_seconds)

    def update_rows(self, rows, k_run: int, draft_seconds: float, verify_seconds: float) -> None:
        k, accepted = sorted(rows, key=lambda row: row[1])[len(rows) // 2]
        self.policy.update(k, accepted, draft_seconds, verify_seconds)
