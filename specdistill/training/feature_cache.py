"""The target's features for an EAGLE-3 head, computed once and kept on disk.

A head's training step runs the frozen target over the batch for two things: the
hidden states the head reads (its features) and the teacher's logits. The target
is about half of such a step on a CPU, and a run sees every row several times, so
``train --draft-type eagle3 --feature-cache DIR`` runs the target once over the
training rows and keeps, per row, the features at the head's layers and the final
(normed) hidden state, in the target's dtype. A step then takes both from memory and
makes the teacher's draft-vocabulary logits with one small matmul: the same numbers
the live target gives (a test checks the loss).

Shards are written whole (beside, then renamed), so a killed run started again
skips the shards it has and writes the rest. ``cache.json`` records the rows' hash,
the layers and the target, and a run whose rows or head differ is refused.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from pathlib import Path

import torch
from safetensors.torch import load_file
from tqdm.auto import tqdm

from specdistill.data.batches import Batch, TokenRows
from specdistill.models import decoder_and_head
from specdistill.training.checkpoints import save_shard
from specdistill.training.eagle3_head import target_states

FORMAT_VERSION = 1
SHARD_ROWS = 256  # rows per shard file: a killed run loses at most one shard of work


def rows_digest(rows: TokenRows) -> str:
    """What identifies the training rows: their ids and mask."""
    digest = hashlib.sha256(rows.input_ids.to(torch.int64).numpy().tobytes())
    digest.update(rows.loss_mask.numpy().tobytes())
    return digest.hexdigest()[:16]


class FeatureRows(TokenRows):
    """Training rows with the target's features [T, 3H] and final hidden states [T, H] per
    row, kept in their shards of ``shard_rows`` rows (never concatenated: that would hold the
    cache twice in memory); a batch carries both (``Batch.features``), so the step skips the target."""

    def __init__(self, rows: TokenRows, shards: list[dict[str, torch.Tensor]], shard_rows: int):
        super().__init__(rows.input_ids, rows.loss_mask, rows.prompts)
        self.shards, self.shard_rows = shards, shard_rows

    def batch(self, step: int, batch_size: int, seed: int) -> Batch:
        rows = self.batch_rows(step, batch_size, seed)
        features, final = ([self.shards[r // self.shard_rows][key][r % self.shard_rows] for r in rows.tolist()]
                           for key in ("features", "final"))
        return Batch(self.input_ids[rows], self.loss_mask[rows], features=(torch.stack(features), torch.stack(final)))


def feature_rows(directory: str, target, rows: TokenRows, layer_ids: list[int], autocast=contextlib.nullcontext,
                 forward_batch: int = 8, progress: bool = True) -> FeatureRows:
    """The rows with their cached features: made (or finished) in ``directory`` first.
    ``autocast`` makes the context the live step runs the target in, so the numbers match."""
    if decoder_and_head(target) is None:
        raise ValueError("feature_cache needs a target whose logits are its final hidden state times the LM head "
                         "(no head bias or logit scaling); train without --feature-cache")
    out = Path(directory)
    expected = {"version": FORMAT_VERSION, "rows_digest": rows_digest(rows), "layer_ids": list(layer_ids),
                "shape": list(rows.input_ids.shape), "dtype": str(next(target.parameters()).dtype),
                "target": getattr(target.config, "name_or_path", "")}
    meta_path = out / "cache.json"
    if meta_path.exists():
        found = json.loads(meta_path.read_text())
        differs = [f"{key}: {found.get(key)} != {value}" for key, value in expected.items() if found.get(key) != value]
        if differs:
            raise ValueError(f"{out} holds features of other rows or another head ({'; '.join(differs)}); "
                             "pass another --feature-cache directory or delete this one")
    out.mkdir(parents=True, exist_ok=True)
    meta_path.write_text(json.dumps(expected, indent=2))
    starts = range(0, len(rows), SHARD_ROWS)
    with tqdm(total=len(rows), desc="target features", unit="row", disable=not progress) as bar:
        for number, start in enumerate(starts):
            path = out / f"shard-{number:05d}.safetensors"
            if not path.exists():
                _write_shard(path, target, rows.input_ids[start: start + SHARD_ROWS], layer_ids,
                             autocast, forward_batch, bar)
            bar.update(min(len(rows), start + SHARD_ROWS) - bar.n)
    shards = [load_file(out / f"shard-{i:05d}.safetensors") for i in range(len(starts))]
    return FeatureRows(rows, shards, SHARD_ROWS)


@torch.no_grad()
def _write_shard(path: Path, target, ids: torch.Tensor, layer_ids: list[int], autocast, forward_batch: int,
                 bar) -> None:
    decoder, _ = decoder_and_head(target)
    device = next(target.parameters()).device
    features, final = [], []
    for start in range(0, len(ids), forward_batch):
        with autocast():
            batch_features, batch_final = target_states(decoder, ids[start: start + forward_batch].to(device),
                                                        layer_ids)
        features.append(batch_features.cpu())
        final.append(batch_final.cpu())
        bar.update(len(final[-1]))
    save_shard(path, {"features": torch.cat(features).contiguous(), "final": torch.cat(final).contiguous()})
