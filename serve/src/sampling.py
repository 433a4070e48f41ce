"""Sampling parameters, logit warping and the speculative acceptance rule.

The same warping (temperature, top-k, top-p) is applied to the target's and
the draft's logits before the rule, so the output follows the *warped* target
distribution exactly (Leviathan et al. 2023; Chen et al. 2023).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SamplingParams:
    """temperature 0 means greedy; top_k 0 and top_p 1 mean no truncation."""

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0

    def __post_init__(self):
        if not self.temperature >= 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0 or int(self.top_k) != self.top_k:
            raise ValueError(f"top_k must be a non-negative integer (0 = off), got {self.top_k}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def warp_probs(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:  # [..., V] -> [..., V]
    """Probabilities after temperature, top-k and top-p (in that order, as HF does)."""
    logits = logits.float() / params.temperature
    if params.top_k and params.top_k < logits.shape[-1]:
        kth = torch.topk(logits, params.top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p < 1:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        sorted_probs = sorted_logits.softmax(-1)
        # Drop a token when the mass strictly before it already reaches top_p;
        # the most likely token is always kept.
        mass_before = sorted_probs.cumsum(-1) - sorted_probs
        drop_sorted = mass_before >= params.top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits.softmax(-1)


def argmax(logits: torch.Tensor) -> torch.Tensor:
    """``logits.argmax(-1)``, taken in fp32: exact (every bf16 value is an fp32 one, and ties go to
    the first index either way), and on a CPU 3.7x faster for bf16 logits over a 49k vocabulary."""
    return logits.float().argmax(-1)


def accept_greedy(draft_tokens: list[int], best: list[int]) -> tuple[int, int]:
    """Accept the longest prefix where the draft equals the target's argmax ``best`` (k + 1
    positions); the next token is the target's argmax after it (a correction, or the bonus)."""
    n = 0
    while n < len(draft_tokens) and draft_tokens[n] == best[n]:
        n += 1
    return n, best[n]


def accept_sampled(
    draft_tokens: torch.Tensor,  # [k]
    draft_probs: torch.Tensor,  # [k, V] warped q the drafts were sampled from
    target_probs: torch.Tensor,  # [k + 1, V] warped p at the same positions, plus one
    generator: torch.Generator | None,
) -> tuple[int, int]:
    """Speculative sampling. Draft token d_i is accepted with probability
    min(1, p_i(d_i) / q_i(d_i)); at the first rejection the next token is drawn
    from norm(max(0, p_i - q_i)), which makes the output distributed as p. When
    all k are accepted, a bonus token is drawn from p_{k+1}."""
    k = draft_tokens.shape[0]
    if k == 0:
        return 0, draw(target_probs[0], generator)
    rows = torch.arange(k, device=draft_tokens.device)
    p = target_probs[rows, draft_tokens]
    q = draft_probs[rows, draft_tokens]
    u = torch.rand(k, generator=generator, device=p.device)
    accepted = (u * q < p).int()  # u < p / q without dividing by q
    n = int(accepted.cumprod(0).sum())
    if n == k:
        dist = target_probs[k]
    else:
        dist = (target_probs[n] - draft_probs[n]).clamp_min(0)
        if not dist.sum() > 0:  # p == q there: a rejection has probability 0; fall back to p
            dist = target_probs[n]
    return n, draw(dist, generator)


def draw(weights: torch.Tensor, generator: torch.Generator | None) -> int:
    """One index drawn with probability proportional to ``weights`` [V] (non-negative, some
    positive; they need not sum to 1), by inverting the float64 running sum at one uniform.
    ``torch.multinomial`` draws one exponential per vocabulary entry: 2 ms for 49k on one core,
    against 0.2 ms here, and a sampled step draws several times per row."""
    cdf = weights.double().cumsum(0)
    u = torch.rand(1, dtype=torch.float64, generator=generator, device=weights.device) * cdf[-1]
    # The first index whose running sum passes u: zero-weight entries (flat steps) are never it.
    return min(int(torch.searchsorted(cdf, u, right=True)), len(cdf) - 1)


def draw_distinct(weights: torch.Tensor, count: int, generator: torch.Generator | None) -> list[int]:
    """Up to ``count`` distinct indices drawn one after another without replacement, each with
    probability proportional to the weights left (fewer when the weights run out)."""
    left, drawn = weights.double(), []
    while len(drawn) < count and bool(left.sum() > 0):
        drawn.append(draw(left, generator))
        left = left.index_fill(0, torch.tensor(drawn[-1:], device=left.device), 0.0)
    return drawn


def warp_rows(logits: torch.Tensor, params: list[SamplingParams]) -> torch.Tensor | None:  # [B, ..., V]
    """``warp_probs`` with each row's own parameters; rows that decode greedily are left
    at 0 (they never read probabilities). None when every row is greedy."""
    groups: dict[SamplingParams, list[int]] = {}
    for row, row_params in enumerate(params):
        if not row_params.greedy:
            groups.setdefault(row_params, []).append(row)
    if not groups:
        return None
    if len(groups) == 1 and len(next(iter(groups.values()))) == len(params):
        return warp_probs(logits, params[0])  # the common case: one setting for the whole batch
    probs = torch.zeros(logits.shape, dtype=torch.float32, device=logits.device)
    for row_params, rows in groups.items():
        index = torch.tensor(rows, device=logits.device)
        probs[index] = warp_probs(logits[index], row_params)
    return probs
