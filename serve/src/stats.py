"""Speculative decoding statistics, kept as raw counts; ratios are derived on report."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class SpecStats:
    """Raw counts of one or more generations. Add two with ``merge``.

    A batched forward serves every row in it, so each row is charged its share
    (1/B) of that call's seconds and of the call itself: summing the rows of a
    batch (``merge``) gives the batch's real calls and seconds, never B times them.
    ``steps`` counts the verification steps a row took part in, so ``tau`` is per
    row (and per row-step once merged).

    ``accepted_at[i]`` counts steps whose i-th draft token was accepted and
    ``reached_at[i]`` steps whose i-th draft token was checked at all (every
    earlier one accepted), so ``accepted_at[i] / reached_at[i]`` is the
    acceptance rate at position i, which decays with i in practice."""

    new_tokens: int = 0
    proposed: int = 0  # draft tokens proposed
    accepted: int = 0  # draft tokens accepted
    rejected: int = 0  # steps that ended at a rejection
    steps: int = 0  # verification steps taken part in
    drafted_steps: int = 0  # of which with at least one draft token (vLLM's num_drafts)
    tree_steps: int = 0  # of which verified a draft tree (the rest drafted a chain, or nothing)
    target_calls: float = 0.0  # share of the verification forwards (1/B of each batched call)
    draft_calls: float = 0.0  # share of the draft forwards
    target_seconds: float = 0.0  # verification calls only
    draft_seconds: float = 0.0  # proposal calls only
    prefill_seconds: float = 0.0  # both prompt prefills, kept apart so per-step costs stay per step
    total_seconds: float = 0.0
    accepted_at: list[int] = field(default_factory=list)
    reached_at: list[int] = field(default_factory=list)
    accept_length_hist: list[int] = field(default_factory=list)  # steps by number of accepted drafts

    def record_step(self, k: int, n: int, tree: bool = False) -> None:
        """One verification step: k drafted (a tree: its longest path), n accepted (n <= k)."""
        self.steps += 1
        self.tree_steps += int(tree)
        self.drafted_steps += int(k > 0)
        self.proposed += k
        self.accepted += n
        self.rejected += int(n < k)
        for counts, upto in ((self.accepted_at, n), (self.reached_at, min(n + 1, k))):
            _grow(counts, upto)
            for i in range(upto):
                counts[i] += 1
        _grow(self.accept_length_hist, n + 1)
        self.accept_length_hist[n] += 1

    def counts(self) -> dict:
        """The counts a draft's acceptance is read from (vLLM's names): drafts, draft tokens, accepted."""
        return {"drafts": self.drafted_steps, "draft_tokens": self.proposed, "accepted": self.accepted}

    def merge(self, other: SpecStats) -> SpecStats:
        out = SpecStats()
        for name, value in asdict(self).items():
            theirs = getattr(other, name)
            if isinstance(value, list):
                width = max(len(value), len(theirs))
                setattr(out, name, [a + b for a, b in zip(_pad(value, width), _pad(theirs, width))])
            else:
                setattr(out, name, value + theirs)
        return out

    @property
    def alpha(self) -> float:
        """Per-token acceptance probability: accepted / checked (the α of the speedup formula)."""
        checked = self.accepted + self.rejected
        return self.accepted / checked if checked else 0.0

    @property
    def acceptance_rate(self) -> float:
        """Accepted / proposed (vLLM's draft acceptance rate)."""
        return self.accepted / self.proposed if self.proposed else 0.0

    @property
    def tau(self) -> float:
        """Mean tokens produced per verification step (accepted drafts + the target's own token)."""
        return self.new_tokens / self.steps if self.steps else 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.total_seconds if self.total_seconds else 0.0

    def per_position_acceptance(self) -> list[float]:
        # accepted_at can be shorter than reached_at (no acceptance at the last positions).
        accepted = _pad(self.accepted_at, len(self.reached_at))
        return [a / r if r else 0.0 for a, r in zip(accepted, self.reached_at)]

    def summary(self) -> dict:
        return {
            "new_tokens": self.new_tokens,
            "alpha": round(self.alpha, 4),
            "acceptance_rate": round(self.acceptance_rate, 4),
            "tau": round(self.tau, 3),
            "tokens_per_s": round(self.tokens_per_second, 2),
            "per_position_acceptance": [round(x, 3) for x in self.per_position_acceptance()],
        }


def _grow(counts: list[int], width: int) -> None:
    counts.extend([0] * (width - len(counts)))


def _pad(values: list[int], width: int) -> list[int]:
    return values + [0] * (width - len(values))
