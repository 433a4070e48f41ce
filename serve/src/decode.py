"""One speculative step over a batch of rows, read top to bottom:

    draft   the draft proposes up to k tokens per row, one batched forward each
    verify  the target scores [last token, d_1..d_k] of every row in ONE forward
    accept  per row, with the row's own sampling parameters and random generator:
            greedy: longest prefix equal to the target's argmax;
            sampling: accept d_i with min(1, p/q), else draw from norm(max(0, p - q)),
            and a bonus token from the target when all k are accepted

A row here is anything with ``tokens`` (the sequence so far), ``params``
(``SamplingParams``) and ``generator`` (a ``torch.Generator`` or None); the
scheduler's ``Request`` is one. Rolling the caches back to the accepted prefix
is the caller's job, as is deciding k.
"""

from __future__ import annotations

import functools
import time

import torch
from specdistill.serve.sampling import accept_greedy, accept_sampled, argmax, draw, warp_rows


def timed(runner, state, input_ids, keep, hidden_layers=None):
    """A runner's forward and the seconds it took (synchronized on CUDA). ``hidden_layers``
    is only passed when asked for, so runners without it keep working."""
    extra = {"hidden_layers": hidden_layers} if hidden_layers else {}
    return clocked(runner.forward, state, input_ids, keep, **extra)


def clocked(call, *args, **kwargs):
    """``call(...)`` and the seconds it took (synchronized on CUDA before and after, so work
    queued earlier is not counted)."""
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    if cuda:
        torch.cuda.synchronize()
    began = time.perf_counter()
    out = call(*args, **kwargs)
    if cuda:
        torch.cuda.synchronize()
    return out, time.perf_counter() - began


def prefill(target, target_state, draft, draft_state, rows, device, layers=None, take_features=None) -> float:
    """Each cache takes each prompt minus its last token (the first step feeds it).
    Prompts are right-padded; the padding is rolled back at once. A feature-conditioned
    draft takes the target's features of those positions instead: ``layers`` (default:
    the draft's) handed to ``take_features(features, counts)`` (default: the draft's own).
    Returns seconds."""
    width = max(len(row.tokens) for row in rows) - 1
    if width < 1:
        return 0.0
    ids = right_padded([row.tokens[:-1] for row in rows], width, device)
    lengths = [len(row.tokens) - 1 for row in rows]
    layers = layers or feature_layers(draft)
    out, seconds = timed(target, target_state, ids, [width - 1] * len(rows), hidden_layers=layers)
    target.rollback(target_state, lengths)
    if layers:
        (take_features or functools.partial(draft.take_features, draft_state))(out[1], lengths)
        return seconds
    _, elapsed = timed(draft, draft_state, ids, [width - 1] * len(rows))
    draft.rollback(draft_state, lengths)
    return seconds + elapsed


def feature_layers(draft) -> list[int] | None:
    """The target hidden states a feature-conditioned draft reads (None for other drafts)."""
    return getattr(draft, "feature_layers", None)


def propose(runner, state, rows, limits: list[int], draft_confidence: float, device):
    """Drafts [B, K], their warped distributions [B, K, V] (None when no row samples),
    each row's number of usable drafts (fewer than asked where the draft lost
    confidence), the seconds spent and the number of draft forwards."""
    steps = max(limits)
    if steps == 0:
        return torch.empty(len(rows), 0, dtype=torch.long, device=device), None, limits, 0.0, 0
    if getattr(runner, "model_free", False):  # prompt lookup / n-gram: drafts read from the rows' own text
        return runner.propose(rows, limits, device)
    # Each row feeds the tokens its draft cache lacks (one or two, more after k = 0 steps),
    # right-padded to a common width; the padding is rolled back after the call.
    pending = [row.tokens[held:] for row, held in zip(rows, state.lengths)]
    if not any(pending):  # a head without features yet (one-token prompts): nothing to draft from
        return torch.empty(len(rows), 0, dtype=torch.long, device=device), None, [0] * len(rows), 0.0, 0
    inputs = right_padded(pending, max(map(len, pending)), device)
    keep = [max(len(p) - 1, 0) for p in pending]
    params = [row.params for row in rows]
    sampled = [i for i, row in enumerate(rows) if not row.params.greedy]
    drafts, probs, seconds, limits = [], [], 0.0, list(limits)
    for step in range(steps):
        logits, elapsed = timed(runner, state, inputs, keep)
        seconds += elapsed
        if step == 0:
            runner.rollback(state, [len(row.tokens) for row in rows])
        # Rows past their limit still feed a token (the batch runs on); argmax draws no randomness,
        # so a seeded row's samples do not depend on the other rows of its batch.
        tokens = argmax(logits)
        q = warp_rows(logits, params) if sampled else None
        for i in sampled:
            if limits[i] > step:
                tokens[i] = draw(q[i], rows[i].generator)
        if q is not None:
            probs.append(q)
        drafts.append(tokens)
        if draft_confidence:
            limits = _stop_unconfident(logits, q, tokens, sampled, limits, step, draft_confidence)
        if max(limits) <= step + 1:
            break
        inputs, keep = tokens[:, None], [0] * len(rows)
    return torch.stack(drafts, 1), (torch.stack(probs, 1) if probs else None), limits, seconds, len(drafts)


def _stop_unconfident(logits, q, tokens, sampled, limits, step, threshold) -> list[int]:
    """Stop a row's drafting once its draft's probability of its own token falls below
    ``threshold`` (HF's assistant_confidence_threshold). It reads only the draft: lossless."""
    confidence = logits.float().softmax(-1).gather(1, tokens[:, None])[:, 0]
    if sampled:
        index = torch.tensor(sampled, device=tokens.device)
        confidence[index] = q[index].gather(1, tokens[index, None])[:, 0]
    low = (confidence < threshold).tolist()
    return [min(limit, step + 1) if stop else limit for limit, stop in zip(limits, low)]


def verify(runner, state, rows, drafts: torch.Tensor, hidden_layers=None):
    """Target logits [B, K + 1, V] after each row's last token and after each draft token
    (with ``hidden_layers``: and the features of those positions), and the seconds the one
    forward took."""
    last = torch.tensor([[row.tokens[-1]] for row in rows], device=drafts.device)
    return timed(runner, state, torch.cat([last, drafts], dim=1), None, hidden_layers=hidden_layers)


def accept(rows, limits, drafts, draft_probs, target_logits) -> list[tuple[int, int]]:
    """(accepted drafts, next token) per row, each by its own rule and generator."""
    target_probs = warp_rows(target_logits, [row.params for row in rows])
    # One argmax for the batch (per row it cost 16 calls a step at 16 rows, each slow in bf16).
    best = argmax(target_logits).tolist() if any(row.params.greedy for row in rows) else None
    draft_ids = drafts.tolist()
    results = []
    for i, (row, k) in enumerate(zip(rows, limits)):
        if row.params.greedy:
            results.append(accept_greedy(draft_ids[i][:k], best[i][: k + 1]))
        else:
            row_probs = None if draft_probs is None else draft_probs[i, :k]
            results.append(accept_sampled(drafts[i, :k], row_probs, target_probs[i, : k + 1], row.generator))
    return results


def right_padded(sequences: list[list[int]], width: int, device) -> torch.Tensor:
    # The pad id is never attended to: it lands past each row's length and is rolled back.
    return torch.tensor([seq + [0] * (width - len(seq)) for seq in sequences], device=device)


def cut_at_eos(produced: list[int], eos) -> tuple[bool, list[int]]:
    for i, token in enumerate(produced):
        if token in eos:
            return True, produced[: i + 1]
    return False, produced
