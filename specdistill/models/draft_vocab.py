"""A draft vocabulary: the training text's token ids ranked by frequency, saved beside a draft
(``draft_vocab.json``); the first N are the ids a draft may propose.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch

log = logging.getLogger(__name__)


DRAFT_VOCAB_FILE = "draft_vocab.json"


def save_draft_vocab(directory: str | os.PathLike, chunks: torch.Tensor, vocab: int, always: list[int]) -> Path:
    """Rank the token ids of the training text by frequency and write them beside the
    draft: the first N are a draft vocabulary subset (``SpeculativeGenerator(draft_vocab=...)``).
    ``always`` (EOS and friends) come first: a draft that cannot propose EOS drafts past it."""
    path = Path(directory) / DRAFT_VOCAB_FILE
    path.write_text(json.dumps({"token_ids_by_frequency": ranked_token_ids(chunks, vocab, always),
                                "tokens_counted": int((chunks < vocab).sum())}))
    return path


def ranked_token_ids(token_ids: torch.Tensor, vocab: int, always: list[int]) -> list[int]:
    """The ids that occur in ``token_ids``, most frequent first, after ``always`` (in range)."""
    counts = torch.bincount(token_ids.flatten().cpu(), minlength=vocab)[:vocab]
    ranked = [int(i) for i in counts.argsort(descending=True, stable=True) if counts[i] > 0]
    return list(dict.fromkeys([t for t in always if 0 <= t < vocab] + ranked))


def load_draft_vocab(directory: str | os.PathLike, size: int | None = None) -> torch.Tensor | None:
    """The ``size`` most frequent token ids saved beside a draft (all of them when None);
    None when the draft has no such file."""
    path = Path(directory) / DRAFT_VOCAB_FILE
    if not path.exists():
        return None
    ranked = json.loads(path.read_text())["token_ids_by_frequency"]
    return torch.tensor(ranked[:size] if size else ranked)
