"""Model-free drafters: no weights, no training; the baseline every comparison shows first.

    prompt-lookup   (HF ``prompt_lookup_num_tokens``) the last n tokens (n = 2, then 1) are
                    looked up in the prompt; the tokens that followed their first match there
                    are the drafts. Strong when the answer copies from the prompt (code
                    edits, summaries, questions about a document).
    ngram           (vLLM's ``ngram`` method) the last n tokens (n = 4 down to 2) are looked
                    up in the prompt and the text generated so far; the most recent match's
                    continuation is the drafts. It also catches the answer repeating itself.

A drafter is a proposer: it reads each row's prompt and tokens and returns up to k
tokens per row. It has no cache, so the runner calls the engine makes of every draft
(start, rollback, select, extend) only keep row counts. The draft distribution is a
point mass on the drafted token, so sampled rows stay exact: the rule accepts d with
probability p(d) and otherwise samples from p with d removed.
"""

from __future__ import annotations

import time

import torch
from specdistill.serve.runners import NoDraft


def _continuation(tokens: list[int], search_end: int, sizes: range, k: int, most_recent: bool) -> list[int]:
    """Up to k tokens that followed an earlier occurrence of the last n tokens of
    ``tokens`` lying within ``tokens[:search_end]``, trying the sizes in order."""
    for n in sizes:
        tail = tokens[-n:]
        last = min(search_end - n, len(tokens) - n - 1)  # the latest start: inside the window, before the tail
        if len(tokens) <= n or last < 0:
            continue
        starts = range(last, -1, -1) if most_recent else range(0, last + 1)
        for start in starts:
            if tokens[start: start + n] == tail:
                follow = tokens[start + n: start + n + k]
                if follow:
                    return follow
    return []


class ModelFreeDrafter(NoDraft):
    """Prompt lookup or n-gram drafts (see the module doc)."""

    model_free = True

    def __init__(self, method: str, vocab_size: int):
        if method not in MODEL_FREE_METHODS:
            raise ValueError(f"unknown model-free drafter {method!r}; choose one of {', '.join(MODEL_FREE_METHODS)}")
        self.name, self.vocab_size = method, vocab_size
        self.sizes, self.prompt_only, self.most_recent = MODEL_FREE_METHODS[method]

    def drafts_for(self, prompt_length: int, tokens: list[int], k: int) -> list[int]:
        search_end = prompt_length if self.prompt_only else len(tokens)
        return _continuation(tokens, search_end, self.sizes, k, self.most_recent)

    def propose(self, rows, limits: list[int], device):
        """Drafts [B, K], point-mass draft distributions [B, K, V] (None when no row
        samples), each row's number of drafts, the seconds spent and one 'call'."""
        start = time.perf_counter()
        found = [self.drafts_for(len(row.prompt), row.tokens, limit) if limit else []
                 for row, limit in zip(rows, limits)]
        width = max(map(len, found), default=0)
        drafts = torch.tensor([d + [0] * (width - len(d)) for d in found], dtype=torch.long,
                              device=device).view(len(rows), width)
        probs = None
        if width and any(not row.params.greedy for row in rows):
            probs = torch.zeros(len(rows), width, self.vocab_size, device=device)
            probs.scatter_(2, drafts[:, :, None], 1.0)
        return drafts, probs, [len(d) for d in found], time.perf_counter() - start, 1 if width else 0


# name -> (n-gram sizes to try, in order; search the prompt only; prefer the most recent match)
MODEL_FREE_METHODS = {
    "prompt-lookup": (range(2, 0, -1), True, False),
    "ngram": (range(4, 1, -1), False, True),
}
