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
    """Pick k in [0, k_max] maximizing expected tokens per second,

        E[tokens | k] / (k * t_draft + t_verify(k)),   E[tokens | k] = 1 + sum_{j<=k} prod_{i<=j} a_i

    where a_i is the acceptance rate of the i-th draft position given that it is
    reached (it decays with i in practice, so one α is not enough), t_draft the
    time of one draft forward and t_verify(k) the time of one target forward
    over k + 1 tokens (nearly flat on GPUs and AMX CPUs for small k, linear when
    compute bound). All are estimated online with exponential forgetting.

    Exploration comes from optimism: a position never reached takes the
    estimate of the position before it, and t_verify is flat until two
    different k have been timed. When k = 0 wins, one drafted token is tried
    every ``probe_every`` steps so a draft that gets better is noticed.
    """

    def __init__(self, k_max: int = 8, warmup_k: int = 4, prior_alpha: float = 0.6, prior_weight: float = 2.0,
                 decay: float = 0.99, probe_every: int = 16):
        if k_max < 1:
            raise ValueError(f"k_max must be >= 1, got {k_max}")
        if not 0 < decay <= 1:
            raise ValueError(f"decay must be in (0, 1], got {decay}")
        self.k_max, self.warmup_k = k_max, min(warmup_k, k_max)
        self.prior_alpha, self.prior_weight, self.decay = prior_alpha, prior_weight, decay
        self.probe_every = probe_every
        self.accepted_at = [0.0] * k_max  # discounted counts, like SpecStats.accepted_at
        self.reached_at = [0.0] * k_max
        self.verify_sum = [0.0] * (k_max + 1)  # discounted seconds and counts per k
        self.verify_count = [0.0] * (k_max + 1)
        self.draft_step_seconds: float | None = None  # moving average of one draft forward
        self._zero_steps = 0

    def next_k(self) -> int:
        if self.draft_step_seconds is None or not any(self.verify_count):
            return self.warmup_k  # nothing measured yet
        best = max(range(self.k_max + 1), key=self.tokens_per_second)
        if best == 0:
            self._zero_steps += 1
            if self._zero_steps >= self.probe_every:
                self._zero_steps = 0
                return 1
        return best

    def update(self, k: int, accepted: int, draft_seconds: float, verify_seconds: float) -> None:
        self.update_rows([(k, accepted)], k, draft_seconds, verify_seconds)

    def update_rows(self, rows: list[tuple[int, int]], k_run: int, draft_seconds: float,
                    verify_seconds: float) -> None:
        """One batched step: (k drafted, accepted) per row; ``k_run`` draft forwards and one
        verification of k_run + 1 tokens were shared by all rows. Forgets once per step."""
        for counts in (self.accepted_at, self.reached_at, self.verify_sum, self.verify_count):
            counts[:] = [c * self.decay for c in counts]
        for k, accepted in rows:
            k = min(k, self.k_max)
            for i in range(min(accepted, k)):
                self.accepted_at[i] += 1
            for i in range(min(accepted + 1, k)):
                self.reached_at[i] += 1
        k = min(k_run, self.k_max)
        self.verify_sum[k] += verify_seconds
        self.verify_count[k] += 1
        if k > 0:
            per_call = draft_seconds / k
            prev = self.draft_step_seconds
            self.draft_step_seconds = per_call if prev is None else 0.9 * prev + 0.1 * per_call

    def acceptance(self) -> list[float]:
        """Estimated acceptance rate a_i at each draft position, i < k_max."""
        rates, prior = [], self.prior_alpha
        for acc, reached in zip(self.accepted_at, self.reached_at):
            prior = (acc + self.prior_weight * prior) / (reached + self.prior_weight)
            rates.append(prior)
        return rates

    def expected_tokens(self, k: int) -> float:
        """Expected tokens from one step with k drafts (accepted drafts + the target's token)."""
        total, survive = 1.0, 1.0
        for a in self.acceptance()[:k]:
            survive *= a
            total += survive
        return total

    def verify_seconds(self, k: int) -> float:
        """t_verify(k) from a weighted least-squares line over the per-k mean times."""
        points = [(j, s / c, c) for j, (s, c) in enumerate(zip(self.verify_sum, self.verify_count)) if c > 1e-3]
        weight = sum(c for _, _, c in points)
        if not weight:
            return 1e-9  # nothing timed yet
        mean_k = sum(j * c for j, _, c in points) / weight
        mean_t = sum(t * c for _, t, c in points) / weight
        spread = sum(c * (j - mean_k) ** 2 for j, _, c in points)
        slope = sum(c * (j - mean_k) * (t - mean_t) for j, t, c in points) / spread if spread > 1e-9 else 0.0
        return max(mean_t + max(slope, 0.0) * (k - mean_k), 1e-9)

    def tokens_per_second(self, k: int) -> float:
        seconds = k * (self.draft_step_seconds or 0.0) + self.verify_seconds(k)
        return self.expected_tokens(k) / seconds if seconds > 0 else math.inf

    def __repr__(self) -> str:
        return f"CostAwareDraftLength(k_max={self.k_max})"


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
