"""Training batches with a loss mask, and the sources they come from.

A batch is token ids [B, T] and a loss mask [B, T]: ``loss_mask[b, t]`` says whether
the draft's distribution at position t (its guess of token t + 1) counts. Fixed
text counts everywhere; a (prompt, answer) record counts only where the next token
is an answer token, so prompts never count and the boundary between prompt and
answer survives packing.

Every source reduces to ``TokenRows``: rows of ids and masks, from which the batch
of a step is a deterministic function of (step, seed), so a resumed run, and every
process of a multi-process run, sees exactly the batches it should.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)


@dataclass
class Batch:
    input_ids: torch.Tensor  # [B, T]
    loss_mask: torch.Tensor  # [B, T] bool: the prediction at t (of token t + 1) counts
    # A cached teacher: top-k log-probs [B, T, K] and their ids [B, T, K]; None = ask the live target.
    teacher: tuple[torch.Tensor, torch.Tensor] | None = None
    # An EAGLE-3 head's cached target states: features [B, T, 3H] and final hidden states [B, T, H].
    features: tuple[torch.Tensor, torch.Tensor] | None = None

    def labels(self, hard: bool) -> torch.Tensor:  # [B, T]
        """Labels for the loss: -100 where the mask is off. With ``hard`` (a cross-entropy
        term), the next token where there is one; otherwise any id (only the mask matters)."""
        if not hard:
            return torch.where(self.loss_mask, 0, -100)
        labels = torch.full_like(self.input_ids, -100)
        labels[:, :-1] = torch.where(self.loss_mask[:, :-1], self.input_ids[:, 1:], -100)
        return labels

    def rows(self, index) -> Batch:
        return self._map(lambda part: part[index])

    def to(self, device) -> Batch:
        return self._map(lambda part: part.to(device))

    def _map(self, fn) -> Batch:
        def parts(pair):
            return None if pair is None else tuple(fn(part) for part in pair)
        return Batch(fn(self.input_ids), fn(self.loss_mask), parts(self.teacher), parts(self.features))

    @property
    def tokens(self) -> int:
        """Positions that count."""
        return int(self.loss_mask.sum())


@dataclass
class TokenRows:
    """Training rows: ids [N, T] and their loss mask [N, T]."""

    input_ids: torch.Tensor
    loss_mask: torch.Tensor
    prompts: list[list[int]] | None = None  # the records' prompts, for on-policy batches (None for plain text)
    # Packed records: per row, (record index, first position, length) of each record in it, in order.
    segments: list[list[tuple[int, int, int]]] | None = None

    def __post_init__(self):
        if self.input_ids.dim() != 2 or self.input_ids.shape != self.loss_mask.shape:
            raise ValueError(f"rows need ids and a mask of one shape [N, T], got {tuple(self.input_ids.shape)} "
                             f"and {tuple(self.loss_mask.shape)}")
        if self.input_ids.shape[0] == 0 or not bool(self.loss_mask.any()):
            raise ValueError("the training data has no tokens that count (empty, or prompts without answers)")

    @classmethod
    def from_chunks(cls, chunks: torch.Tensor) -> TokenRows:
        """Fixed text: every position counts."""
        return cls(chunks, torch.ones_like(chunks, dtype=torch.bool))

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def batch_rows(self, step: int, batch_size: int, seed: int) -> torch.Tensor:
        """The row indices of a step's global batch: a deterministic function of (step,
        seed); each epoch is a fresh permutation of the rows."""
        n = len(self)
        epoch, offset = divmod(step * batch_size, n)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch))
        return torch.stack([order[(offset + i) % n] for i in range(batch_size)])

    def batch(self, step: int, batch_size: int, seed: int) -> Batch:
        rows = self.batch_rows(step, batch_size, seed)
        return Batch(self.input_ids[rows], self.loss_mask[rows])


def pack_records(records: list[tuple[list[int], list[int]]], seq_len: int, pad_id: int) -> TokenRows:
    """(prompt ids, answer ids) records packed whole into rows of ``seq_len`` (greedy, in
    order); the mask covers the positions that predict answer tokens. A record longer
    than a row is cut at ``seq_len``; one whose prompt fills a row is skipped (counted
    in the log). Padding never counts."""
    if seq_len < 2:
        raise ValueError(f"seq_len must be >= 2, got {seq_len}")
    rows, masks, segments, ids, mask, segment, skipped = [], [], [], [], [], [], 0
    for index, (prompt, answer) in enumerate(records):
        if not answer or len(prompt) >= seq_len:
            skipped += 1
            continue
        tokens = (prompt + answer)[:seq_len]
        # Position t predicts token t + 1: answer token j (at len(prompt) + j) is predicted at len(prompt) + j - 1.
        counts = [len(prompt) - 1 <= t < len(tokens) - 1 for t in range(len(tokens))]
        if len(ids) + len(tokens) > seq_len:
            rows.append(ids), masks.append(mask), segments.append(segment)
            ids, mask, segment = [], [], []
        segment = segment + [(index, len(ids), len(tokens))]
        ids, mask = ids + tokens, mask + counts
    if ids:
        rows.append(ids), masks.append(mask), segments.append(segment)
    if skipped:
        log.warning("%d of %d records had no answer tokens within seq_len=%d and were skipped", skipped,
                    len(records), seq_len)
    if not rows:
        raise ValueError(f"no record has answer tokens within seq_len={seq_len}; raise seq_len or check the data")
    return TokenRows(
        torch.tensor([row + [pad_id] * (seq_len - len(row)) for row in rows]),
        torch.tensor([row + [False] * (seq_len - len(row)) for row in masks]),
        prompts=[prompt for prompt, _ in records],
        segments=segments,
    )


def record_rows(records: list[tuple[list[int], list[int]]], pad_id: int) -> TokenRows:
    """One (prompt, answer) record per row, padded to the longest (for measurement,
    where a row must not see another record); the mask counts the answer's predictions."""
    width = max(len(prompt) + len(answer) for prompt, answer in records)
    ids = torch.full((len(records), width), pad_id, dtype=torch.long)
    mask = torch.zeros(len(records), width, dtype=torch.bool)
    for i, (prompt, answer) in enumerate(records):
        ids[i, : len(prompt) + len(answer)] = torch.tensor(prompt + answer)
        mask[i, len(prompt) - 1: len(prompt) + len(answer) - 1] = len(answer) > 0
    return TokenRows(ids, mask, prompts=[prompt for prompt, _ in records])
