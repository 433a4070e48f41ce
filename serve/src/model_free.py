"""Model-free drafters: no weights, no training; the baseline every comparison shows first.

    prompt-lookup   (HF ``prompt_lookup_num_tokens``) the last n tokens (n = 2, then 1) are
                    looked up in the prompt; the tokens that followed their first match there
                    are the drafts. Strong when the answer copies from the prompt (code
                    edits, summaries, questions about a document).
    ngram           (vLLM's ``ngram`` method) the last n tokens (n = 4 down to 2) are looked
                    up in the prompt and the text generated so far; the most recent match's
                    continuation is the drafts. It also catches the answer repeating itself.

``RetrievalBranch`` reads the same candidates for a draft head: they join the head's tree
as one more branch, verified in the same pass (``specdistill.serve.tree.add_branches``).

A drafter is a proposer: it reads each row's prompt and tokens and returns up to k
tokens per row. It has no cache, so the runner calls the engine makes of every draft
(start, rollback, select, extend) only keep row counts. The draft distribution is a
point mass on the drafted token, so sampled rows stay exact: the rule accepts d with
probability p(d) and otherwise samples from p with d removed.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from specdistill.serve.datastore import TokenDatastore, corpus_for
from specdistill.serve.runners import NoDraft


def continuation(tokens: list[int], search_end: int, sizes: range, k: int, most_recent: bool) -> list[int]:
    """Up to k tokens that followed an earlier occurrence of the last n tokens of
    ``tokens`` lying within ``tokens[:search_end]``, trying the sizes in order."""
    text = np.asarray(tokens, dtype=np.int64)
    for n in sizes:
        last = min(search_end - n, len(tokens) - n - 1)  # the latest start: inside the window, before the tail
        if len(tokens) <= n or last < 0:
            continue
        # One vectorized pass over every start (a Python loop costs ms per step on long prompts).
        windows = np.lib.stride_tricks.sliding_window_view(text[: last + n], n)
        starts = np.flatnonzero((windows == text[-n:]).all(axis=1))
        if starts.size:
            start = int(starts[-1] if most_recent else starts[0])
            return _copy(tokens, start + n, k)
    return []


def _copy(tokens: list[int], start: int, k: int) -> list[int]:
    """k tokens read on from ``start``; past the end, the copy reads its own output (as LZ77 does),
    so a match that overlaps the tail continues the repeat ("a b a b" -> "a b a b ...")."""
    out = tokens[start: start + k]
    while len(out) < k:
        out.append(out[len(out) - (len(tokens) - start)])
    return out


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
        return continuation(tokens, search_end, self.sizes, k, self.most_recent)

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


# What a retrieval branch falls back on where the row's own text holds no match (``datastore``): none, the
# outputs served so far, or those and the serving head's corpus (else the default target's shipped one).
STORES = ("", "served", "corpus")


@dataclass(frozen=True)
class RetrievalBranch:
    """A branch for a head's draft tree: the tokens that followed the row's last n-gram earlier in its
    prompt (``prompt-lookup``) or in its prompt and answer so far (``ngram``), up to ``max_tokens``.
    Copy-heavy answers (summaries, extraction, questions over a document, code edits) continue text
    the head may never have learned; the target decides in the same verification, so it is lossless.

    Where the row's text holds no match, a ``store`` (``+served``, ``+corpus``) gives what followed its last
    n-gram in the outputs this engine served so far, and (``corpus``) in the answers the serving head trained
    on (its directory's ``datastore.npz``; the shipped head's are the default target's own): phrasing a
    target repeats across answers ("Here's a step-by-step ...")."""

    method: str = "ngram"
    max_tokens: int = 8
    store: str = ""
    datastore: TokenDatastore | None = field(default=None, compare=False, repr=False)

    def __post_init__(self):
        if self.method not in MODEL_FREE_METHODS:
            raise ValueError(f"unknown retrieval method {self.method!r}; choose one of {', '.join(MODEL_FREE_METHODS)}")
        if self.max_tokens < 1:
            raise ValueError(f"a retrieval branch needs max_tokens >= 1, got {self.max_tokens}")
        if self.store not in STORES:
            raise ValueError(f"unknown retrieval store {self.store!r}; choose served or corpus")

    def __str__(self) -> str:
        return f"{self.method}:{self.max_tokens}" + (f"+{self.store}" if self.store else "")  # what ``parse`` reads

    @classmethod
    def parse(cls, spec: str | RetrievalBranch | None, tree: bool = True) -> RetrievalBranch | None:
        """``METHOD[:TOKENS][+STORE]`` (``ngram``, ``prompt-lookup:12``, ``ngram:8+served``); "", "none" or
        None for no branch; "auto" for ``ngram:8+corpus`` when a head drafts a tree (``tree``), else none."""
        if spec is None or isinstance(spec, RetrievalBranch):
            return spec
        text = str(spec).strip()
        if text in ("", "none") or (text == "auto" and not tree):
            return None
        if text == "auto":
            return cls(store="corpus")
        match = re.fullmatch(r"([a-z-]+)(?::(\d+))?(?:\+([a-z]+))?", text)
        if not match:
            raise ValueError(f"a retrieval branch is METHOD[:TOKENS][+STORE] (e.g. ngram, prompt-lookup:12, "
                             f"ngram:8+served), auto or none; got {spec!r}")
        return cls(match[1], int(match[2]) if match[2] else 8, match[3] or "")

    def for_target(self, vocab_size: int, draft=None) -> RetrievalBranch:
        """This branch with its own datastore (each generator learns its own traffic). Its corpus is the
        one ``draft`` brings (the answers a head trained on), else the default target's shipped one: a
        target with another vocabulary gets the served outputs only."""
        if not self.store:
            return self
        corpus = corpus_for(draft, vocab_size) if self.store == "corpus" else None
        return replace(self, datastore=TokenDatastore(corpus))

    def use_corpus_of(self, draft, vocab_size: int) -> None:
        """A new draft serves (a swap): its corpus from now on; the outputs served so far stay."""
        if self.datastore is not None and self.store == "corpus":
            self.datastore.corpus = corpus_for(draft, vocab_size)

    def branches(self, rows, limits: list[int]) -> list[list[int]]:
        """Per row, up to ``min(max_tokens, limits[b])`` candidate tokens (often none)."""
        sizes, prompt_only, most_recent = MODEL_FREE_METHODS[self.method]
        found = []
        for row, limit in zip(rows, limits):
            k = min(self.max_tokens, limit)
            own = continuation(row.tokens, len(row.prompt) if prompt_only else len(row.tokens), sizes, k,
                               most_recent) if k > 0 else []
            found.append(own or (self.datastore.continuation(row.tokens, k) if self.datastore and k > 0 else []))
        return found

    def learn(self, output: list[int]) -> None:
        """A finished request's output joins the served outputs (where this branch keeps a store)."""
        if self.datastore is not None:
            self.datastore.add(output)
