"""Continuations from a store of the target's own text: what followed the row's last n tokens in a
corpus of answers and in the outputs served so far (REST, He et al. 2023; SuffixDecoding, Oliaro et al.
2024), for the retrieval branch when the row's own text holds no match (``model_free.RetrievalBranch``).

    index     for each n in 5, 4, 3: a hash of every n-gram of the store, sorted, with where it
              starts; documents (one answer each) are kept apart by a separator, so no n-gram or
              continuation crosses two of them
    lookup    the longest n whose last n tokens occur: among their latest ``MATCHES`` occurrences,
              follow the most frequent next token, keep the occurrences that agree, and so on, while
              that token holds at least ``AGREEMENT`` of them and ``SUPPORT`` occurrences
    learn     ``add`` puts each finished request's output in the served part, indexed again every
              ``REINDEX_TOKENS`` new tokens, keeping the latest ``max_served_tokens``
    corpus    a head's folder may hold one (``CORPUS_FILE``): the answers it trained on, which
              ``specdistill train`` writes beside it (``save_head_corpus``); the shipped head's are the
              default target's own answers

The target verifies every candidate, so a store that guesses wrong costs verification, never output.
The served part lives in memory only: it holds what users were answered, and goes with the process.
"""

from __future__ import annotations

import functools
from importlib import resources
from pathlib import Path

import numpy as np

SIZES = (5, 4, 3)  # n-gram lengths tried, longest first (2-grams match nearly anywhere, and wrongly)
MATCHES = 64  # the latest occurrences a lookup weighs
# Stop where the most frequent next token holds less than this share of the occurrences, or fewer than
# SUPPORT of them: a lone occurrence guesses wrong more often than not, and each wrong branch is verified
# for nothing and lowers the policy's estimate of the text's own branches (held-out prompts 6-10 of each
# task, as served: 0.5 and 2 gave tau 2.35 and 1.10x the tokens/s without a store; 0.3 and 1, 2.21 and 1.02x).
AGREEMENT = 0.5
SUPPORT = 2
REINDEX_TOKENS = 2048
SEPARATOR = -1
CORPUS_FILE = "datastore.npz"  # in the shipped head's directory: the default target's answers


def _hashes(windows: np.ndarray) -> np.ndarray:
    """A 64-bit polynomial hash of each row of ``windows`` [N, n] (wrapping, as intended)."""
    h = np.zeros(len(windows), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for column in windows.T:
            h = h * np.uint64(1_000_003) + column.astype(np.uint64)
    return h


class CorpusIndex:
    """The sorted n-gram hashes of one token array (documents separated by ``SEPARATOR``); immutable, so one
    index of a fixed corpus serves every generator of a process."""

    def __init__(self, tokens: np.ndarray):
        self.tokens = tokens
        self.by_size = {}
        for n in SIZES:
            if len(tokens) <= n:
                continue
            windows = np.lib.stride_tricks.sliding_window_view(tokens, n)[:-1]  # each has a next token
            inside = (windows != SEPARATOR).all(1) & (tokens[n:] != SEPARATOR)
            starts = np.flatnonzero(inside)
            hashes = _hashes(windows[starts])
            order = np.argsort(hashes, kind="stable")  # equal hashes stay in text order: the latest last
            self.by_size[n] = (hashes[order], starts[order])

    def continuation(self, tail: list[int], k: int) -> list[int]:
        for n in SIZES:
            if len(tail) < n or n not in self.by_size:
                continue
            hashes, starts = self.by_size[n]
            key = _hashes(np.asarray([tail[-n:]], dtype=np.int64))[0]
            low, high = np.searchsorted(hashes, key), np.searchsorted(hashes, key, side="right")
            if high > low:
                found = self._walk(starts[max(low, high - MATCHES):high] + n, k)
                if found:
                    return found
        return []

    def _walk(self, nexts: np.ndarray, k: int) -> list[int]:
        """Follow the most frequent next token while enough of the occurrences agree."""
        out = []
        while len(out) < k and len(nexts):
            following = self.tokens[nexts]
            tokens, counts = np.unique(following[following != SEPARATOR], return_counts=True)
            if not len(tokens) or counts.max() < max(AGREEMENT * len(nexts), SUPPORT):
                break
            best = tokens[counts.argmax()]
            out.append(int(best))
            nexts = nexts[following == best] + 1
            nexts = nexts[nexts < len(self.tokens)]
        return out


class TokenDatastore:
    """A fixed corpus (optional) and, when ``learn``, the outputs served so far."""

    def __init__(self, corpus: CorpusIndex | None = None, learn: bool = True, max_served_tokens: int = 1 << 18):
        self.corpus = corpus
        self.learn, self.max_served_tokens = learn, max_served_tokens
        self.served: CorpusIndex | None = None
        self._served_tokens: list[int] = []
        self._pending = 0

    def add(self, tokens: list[int]) -> None:
        """One finished output, for later lookups (indexed every ``REINDEX_TOKENS`` tokens)."""
        if not self.learn or not tokens:
            return
        self._served_tokens += [*tokens, SEPARATOR]
        self._pending += len(tokens) + 1
        if self._pending >= REINDEX_TOKENS:
            self._served_tokens = self._served_tokens[-self.max_served_tokens:]
            self.served = CorpusIndex(np.asarray(self._served_tokens, dtype=np.int64))
            self._pending = 0

    def continuation(self, tokens: list[int], k: int) -> list[int]:
        """Up to k tokens that followed the last n tokens of ``tokens``: from the served outputs (this
        server's own traffic) first, else from the corpus."""
        if k < 1:
            return []
        for index in (self.served, self.corpus):
            if index is not None and (found := index.continuation(tokens, k)):
                return found
        return []

    def __len__(self) -> int:
        corpus = 0 if self.corpus is None else len(self.corpus.tokens)
        return corpus + len(self._served_tokens)


SHIPPED_DIR = resources.files("specdistill") / "default_draft"
MAX_CORPUS_TOKENS = 1 << 22  # a head's corpus keeps its latest 4M tokens (~3.5 MB on disk)


def draft_corpus(directory: str) -> tuple[CorpusIndex, int] | None:
    """The corpus in a draft's directory (``CORPUS_FILE``), indexed once per process and version of the
    file (~0.7 s for 1M tokens), and its vocabulary size; None where the directory holds none."""
    path = Path(directory) / CORPUS_FILE
    if not path.is_file():
        return None
    stat = path.stat()
    return _indexed(str(path), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=8)
def _indexed(path: str, modified: int, size: int) -> tuple[CorpusIndex, int]:
    with np.load(path) as saved:
        tokens = saved["tokens"].astype(np.int64)
        tokens[tokens == saved["separator"]] = SEPARATOR
        return CorpusIndex(tokens), int(saved["vocab_size"])


def shipped_corpus() -> tuple[CorpusIndex, int]:
    """The default target's corpus: the answers its shipped head trained on."""
    return draft_corpus(str(SHIPPED_DIR))


def corpus_for(draft, vocab_size: int) -> CorpusIndex | None:
    """The corpus a draft brings (a head loaded from a directory with ``CORPUS_FILE``: the answers it
    trained on), else the shipped one; None where neither is in this target's vocabulary."""
    source = getattr(draft, "source", None)
    for found in (draft_corpus(str(source)) if source else None, shipped_corpus()):
        if found is not None and found[1] == vocab_size:
            return found[0]
    return None


def corpus_answers(index: CorpusIndex | None) -> list[list[int]]:
    """A corpus back as its answers (token id lists)."""
    if index is None or not len(index.tokens):
        return []
    pieces = np.split(index.tokens, np.flatnonzero(index.tokens == SEPARATOR) + 1)
    return [kept.tolist() for piece in pieces if len(kept := piece[piece != SEPARATOR])]


def save_corpus(path: Path, answers: list[list[int]], vocab_size: int) -> int:
    """Answers (token ids) as a corpus file: uint16 where the vocabulary fits, compressed; the token count."""
    separator = np.iinfo(np.uint16).max if vocab_size < np.iinfo(np.uint16).max else -1
    dtype = np.uint16 if separator != -1 else np.int32
    tokens = np.concatenate([np.asarray([*a, separator], dtype=np.int64) for a in answers]).astype(dtype)
    np.savez_compressed(path, tokens=tokens, separator=np.int64(separator), vocab_size=np.int64(vocab_size))
    return len(tokens)


def save_head_corpus(path: Path, start: CorpusIndex | None, answers: list[list[int]], vocab_size: int) -> int:
    """A trained head's corpus: its starting draft's (``start``) and the answers it trained on, each distinct
    answer once, the latest ``MAX_CORPUS_TOKENS`` kept; the token count (0: nothing written)."""
    distinct = list(dict.fromkeys(map(tuple, corpus_answers(start) + answers)))
    kept, total = [], 0
    for answer in reversed(distinct):
        if total + len(answer) + 1 > MAX_CORPUS_TOKENS:
            break
        kept.append(list(answer))
        total += len(answer) + 1
    return save_corpus(path, kept[::-1], vocab_size) if kept else 0
