"""The target's states of packed records, each record's own, for an EAGLE-3 head's fine-tune.

``specdistill adapt`` trains a head on (prompt, answer) records packed into rows. Its step
needs the target's states at every position (``training.eagle3_head.head_step``); here they
come per record (``specdistill.models.target_states``), as the target computed them while
serving that request alone:

    read     from the capture's ``states`` folder (``serve --capture-features``), or from the
             run's own folder, where an earlier run or cycle left them
    compute  the rest, once: the target over each record alone, kept in the run's folder, so
             the next cycle of ``adapt --every`` runs the target over new records only
    join     a batch's rows are joined from their records' states at the records' places
             (``TokenRows.segments``); a record's last position, which the target never
             read while serving, and padding get zeros (no loss counts there)

Unlike ``feature_cache`` (the target over whole packed rows), no record's states depend on
the record packed before it: they are the states the head reads when it serves.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import torch
from tqdm.auto import tqdm

from specdistill.data.batches import Batch, TokenRows
from specdistill.models import decoder_and_head
from specdistill.models.target_states import load_states, record_key, save_states
from specdistill.training.eagle3_head import target_states

log = logging.getLogger(__name__)


class RecordStateRows(TokenRows):
    """Packed rows whose batches carry the target's states (``Batch.features``, in ``dtype``), joined
    from ``states[i]`` = (features [n, F], final [n, H]) of record i (None for records left out)."""

    def __init__(self, rows: TokenRows, states: list[tuple[torch.Tensor, torch.Tensor] | None], dtype: torch.dtype,
                 counts: dict | None = None):
        if rows.segments is None:
            raise ValueError("record states need rows packed from records (pack_records)")
        super().__init__(rows.input_ids, rows.loss_mask, rows.prompts, rows.segments)
        self.states, self.dtype = states, dtype
        self.widths = next((f.shape[1], h.shape[1]) for f, h in (s for s in states if s is not None))
        self.counts = counts or {}  # records whose states were read and computed

    def batch(self, step: int, batch_size: int, seed: int) -> Batch:
        index = self.batch_rows(step, batch_size, seed)
        features, final = zip(*(self.row_states(int(row)) for row in index))
        return Batch(self.input_ids[index], self.loss_mask[index], features=(torch.stack(features), torch.stack(final)))

    def row_states(self, row: int) -> tuple[torch.Tensor, torch.Tensor]:
        width, (feature_width, hidden) = self.input_ids.shape[1], self.widths
        features = torch.zeros(width, feature_width, dtype=self.dtype)
        final = torch.zeros(width, hidden, dtype=self.dtype)
        for record, start, length in self.segments[row]:
            record_features, record_final = self.states[record]
            n = min(length, len(record_features))
            features[start: start + n], final[start: start + n] = record_features[:n], record_final[:n]
        return features, final


def record_state_rows(rows: TokenRows, records: list[tuple[list[int], list[int]]], target, target_name: str,
                      layer_ids: list[int], folder: str | Path, read_from: list[str | Path] = (),
                      autocast=contextlib.nullcontext, forward_tokens: int = 8192,
                      progress: bool = True) -> RecordStateRows:
    """``rows`` (``pack_records(records, ...)``) with each packed record's target states: read from
    ``folder`` or ``read_from`` (a capture's ``states``) when they are ``target_name``'s for these layers,
    the rest computed and kept in ``folder``. Only the positions the rows hold are kept in memory."""
    if decoder_and_head(target) is None:
        raise ValueError("record states need a target whose logits are its final hidden state times the LM head "
                         "(no head bias or logit scaling)")
    used: dict[int, int] = {}  # packed record -> the positions its row holds (fewer where cut at the row's end)
    for row in rows.segments:
        for record, _, length in row:
            used[record] = length
    keys = [record_key(prompt, answer) for prompt, answer in records]
    states: list = [None] * len(records)
    missing: dict[str, list[int]] = {}  # key -> the packed records that share it
    for index, length in sorted(used.items()):
        # A server never reads a record's last token: its states may be one position short.
        found = load_states([folder, *read_from], keys[index], layer_ids, target_name, least=length - 1)
        if found is None:
            missing.setdefault(keys[index], []).append(index)
        else:
            states[index] = tuple(part[:length].clone() if len(part) > length else part for part in found)
    read = len({keys[i] for i, s in enumerate(states) if s is not None})
    log.info("target states: %d records read, %d to compute", read, len(missing))
    for key, computed in _computed(target, records, missing, used, layer_ids, autocast, forward_tokens, progress):
        save_states(folder, key, *computed, layer_ids, target_name)
        for index in missing[key]:
            states[index] = computed
    return RecordStateRows(rows, states, next(target.parameters()).dtype, {"read": read, "computed": len(missing)})


@torch.no_grad()
def _computed(target, records, missing: dict[str, list[int]], used: dict[int, int], layer_ids: list[int], autocast,
              forward_tokens: int, progress: bool):
    """(key, (features, final)) of each missing record: the target over the positions its rows hold, alone,
    records of similar length batched (right-padded: a causal model's earlier positions never see the padding)."""
    if not missing:
        return
    decoder, _ = decoder_and_head(target)
    device = next(target.parameters()).device
    tokens_of = {key: _tokens(records[indices[0]])[: used[indices[0]]] for key, indices in missing.items()}
    todo = sorted(missing, key=lambda key: -len(tokens_of[key]))  # longest first: it sets a batch's width
    with tqdm(total=len(todo), desc="target states", unit="record", disable=not progress) as bar:
        while todo:
            batch = todo[: max(1, forward_tokens // len(tokens_of[todo[0]]))]
            todo = todo[len(batch):]
            longest = len(tokens_of[batch[0]])
            ids = torch.tensor([tokens_of[key] + [0] * (longest - len(tokens_of[key])) for key in batch], device=device)
            with autocast():
                features, final = (part.cpu() for part in target_states(decoder, ids, layer_ids))
            for row, key in enumerate(batch):
                n = len(tokens_of[key])
                yield key, (features[row, :n].clone(), final[row, :n].clone())
            bar.update(len(batch))


def _tokens(record: tuple[list[int], list[int]]) -> list[int]:
    prompt, answer = record
    return prompt + answer
