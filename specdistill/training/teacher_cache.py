"""An offline teacher: the target's top-k log-probs, computed once and kept on disk.

``specdistill cache-teacher`` reads the data as ``train`` would, runs the target
once over every row and writes, for each position the loss counts, the top-k
log-probs of ``softmax(logits / T)``, their token ids and the tail mass ``1 - Σ p_k``
(in safetensors shards of ``shard_rows`` rows, beside a ``cache.json``). ``train
--teacher-cache DIR`` then trains without the target's forward passes, through the
sparse loss (top-k + one tail bucket; with K = V it is the dense loss).

Shards are written whole (beside, then renamed), so a killed run started again
skips the shards it has and writes the rest.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file
from tqdm.auto import tqdm

from specdistill.data.batches import Batch, TokenRows
from specdistill.models import load_target, vocab_size
from specdistill.options import changed_fields, option
from specdistill.training.checkpoints import save_shard
from specdistill.training.sources import DataConfig, data_rows, read_data
from specdistill.training.step import autocast

log = logging.getLogger(__name__)
FORMAT_VERSION = 1
CACHE_DTYPES = {"fp16": torch.float16, "fp32": torch.float32}


@dataclass
class CacheConfig(DataConfig):
    """Run the target once over the data and keep its top-k log-probs for `train --teacher-cache`."""

    out: str = option("runs/teacher-cache", "the cache directory (cache.json and safetensors shards)",
                      resumable=True)
    top_k: int = option(64, "log-probs kept per position (the rest of the mass becomes one tail bucket)")
    cache_dtype: str = option("fp16", "fp16 or fp32 for the stored log-probs")
    max_tokens: int = option(2_000_000, "with plain text data: tokens to read")
    shard_rows: int = option(256, "rows per shard file")
    forward_batch: int = option(8, "rows per target forward pass", resumable=True)

    def __post_init__(self):
        super().__post_init__()
        if self.top_k < 1 or self.shard_rows < 1 or self.forward_batch < 1 or self.max_tokens < 1:
            raise ValueError("top_k, shard_rows, forward_batch and max_tokens must be >= 1")
        if self.cache_dtype not in CACHE_DTYPES:
            raise ValueError(f"cache_dtype must be one of {sorted(CACHE_DTYPES)}, got {self.cache_dtype!r}")


def run_cache_teacher(config: CacheConfig, target=None, tokenizer=None, progress: bool = True) -> dict:
    """Write (or finish) the cache; returns its summary (also in ``cache.json``)."""
    out = Path(config.out)
    meta_path = out / "cache.json"
    settings = asdict(config)
    if meta_path.exists():
        # A rerun with other settings (those not marked resumable) would mix two teachers.
        changed = changed_fields(json.loads(meta_path.read_text())["settings"], config)
        if changed:
            raise ValueError(f"{out} holds a cache made with other settings ({'; '.join(changed)}); "
                             "pass another --out")
    source = read_data(config)  # the data's errors come before any model load
    if target is None:
        target, tokenizer = load_target(config.target)
    target.eval()
    out.mkdir(parents=True, exist_ok=True)
    rows = data_rows(config, target, tokenizer, config.max_tokens, out, progress, source)
    k = min(config.top_k, vocab_size(target))
    eos = getattr(target.generation_config, "eos_token_id", None)
    meta = {"version": FORMAT_VERSION, "settings": settings, "top_k": k, "vocab_size": vocab_size(target),
            "target_name": getattr(target.config, "name_or_path", config.target),
            "eos_token_ids": [eos] if isinstance(eos, int) else list(eos or []), "rows": len(rows)}
    meta_path.write_text(json.dumps(meta | {"complete": False}, indent=2))
    shards = range(0, len(rows), config.shard_rows)
    with tqdm(total=len(rows), desc="teacher cache", unit="row", disable=not progress) as bar:
        for number, start in enumerate(shards):
            path = out / f"shard-{number:05d}.safetensors"
            if not path.exists():
                _write_shard(path, target, rows, slice(start, start + config.shard_rows), k, config, bar)
            bar.update(min(len(rows), start + config.shard_rows) - bar.n)
    tokens = int(rows.loss_mask.sum())
    size = sum(p.stat().st_size for p in out.glob("shard-*.safetensors"))
    meta |= {"complete": True, "shards": len(shards), "tokens": tokens, "bytes": size,
             "bytes_per_token": round(size / max(tokens, 1), 1)}
    meta_path.write_text(json.dumps(meta, indent=2))
    return {key: meta[key] for key in ("rows", "tokens", "top_k", "shards", "bytes", "bytes_per_token")} | {
        "out": str(out)}


@torch.no_grad()
def teacher_topk(target, ids: torch.Tensor, mask: torch.Tensor, k: int, temperature: float, bf16: bool,
                 forward_batch: int, bar=None) -> tuple[torch.Tensor, torch.Tensor]:
    """The target's top-k log-probs of softmax(logits / T) and their ids at the positions
    ``mask`` counts, in row-major order: [M, K] each."""
    device = next(target.parameters()).device
    logprobs, indices = [], []
    for start in range(0, len(ids), forward_batch):
        chunk_ids = ids[start: start + forward_batch].to(device)
        chunk_mask = mask[start: start + forward_batch].to(device)
        with autocast(device, bf16):
            logits = target(input_ids=chunk_ids).logits
        top = torch.log_softmax(logits[chunk_mask].float() / temperature, dim=-1).topk(k, dim=-1)
        logprobs.append(top.values.cpu()), indices.append(top.indices.cpu())
        if bar is not None:
            bar.update(len(chunk_ids))
    return torch.cat(logprobs), torch.cat(indices)


def _write_shard(path: Path, target, rows: TokenRows, part: slice, k: int, config: CacheConfig, bar) -> None:
    ids, mask = rows.input_ids[part], rows.loss_mask[part]
    lp, idx = teacher_topk(target, ids, mask, k, config.temperature, config.bf16, config.forward_batch, bar)
    tensors = {
        "input_ids": ids.to(torch.int32).contiguous(), "loss_mask": mask.contiguous(),
        "topk_logprobs": lp.to(CACHE_DTYPES[config.cache_dtype]).contiguous(),
        "topk_indices": idx.to(torch.int32).contiguous(),
        "tail_mass": (1 - lp.double().exp().sum(-1)).clamp_min(0).float().contiguous(),
    }
    save_shard(path, tensors)


class CachedRows(TokenRows):
    """Training rows with the teacher's top-k at every counted position, in order:
    ``topk_logprobs[offsets[r]:offsets[r + 1]]`` belong to row r."""

    def __init__(self, input_ids, loss_mask, topk_logprobs, topk_indices):
        super().__init__(input_ids, loss_mask)
        self.topk_logprobs, self.topk_indices = topk_logprobs, topk_indices
        counts = loss_mask.sum(1)
        self.offsets = torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)])
        if int(self.offsets[-1]) != len(topk_logprobs):
            raise ValueError(f"the cache holds {len(topk_logprobs)} teacher positions for {int(self.offsets[-1])} "
                             "counted tokens: it is damaged; make it again")

    def batch(self, step: int, batch_size: int, seed: int) -> Batch:
        rows = self.batch_rows(step, batch_size, seed)
        return Batch(self.input_ids[rows], self.loss_mask[rows], self._teacher(rows))

    def _teacher(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, T, K] log-probs and ids; where the mask is off, a valid uniform stand-in
        (distinct ids) that the loss ignores."""
        b, t = len(rows), self.input_ids.shape[1]
        k = self.topk_logprobs.shape[1]
        lp = torch.full((b, t, k), -float(torch.log(torch.tensor(float(k)))), dtype=torch.float32)
        idx = torch.arange(k).expand(b, t, k).clone()
        for i, row in enumerate(rows.tolist()):
            span = slice(int(self.offsets[row]), int(self.offsets[row + 1]))
            lp[i][self.loss_mask[row]] = self.topk_logprobs[span].float()
            idx[i][self.loss_mask[row]] = self.topk_indices[span].long()
        return lp, idx


def load_cache(directory: str) -> tuple[CachedRows, dict]:
    """The rows and teacher of a finished cache, and its ``cache.json``."""
    path = Path(directory)
    meta_path = path / "cache.json"
    if not meta_path.exists():
        raise FileNotFoundError(f"{directory!r} is not a teacher cache (no cache.json); make one with "
                                "`specdistill cache-teacher --out DIR`")
    meta = json.loads(meta_path.read_text())
    if not meta.get("complete"):
        raise ValueError(f"the teacher cache in {directory!r} is unfinished; run the same cache-teacher command "
                         "again to finish it")
    shards = [load_file(path / f"shard-{i:05d}.safetensors") for i in range(meta["shards"])]
    rows = CachedRows(torch.cat([s["input_ids"] for s in shards]).long(), torch.cat([s["loss_mask"] for s in shards]),
                      torch.cat([s["topk_logprobs"] for s in shards]), torch.cat([s["topk_indices"] for s in shards]))
    return rows, meta


def check_cache_fits(meta: dict, config) -> None:
    """The cache must hold what this run would have asked the live target for."""
    settings = meta["settings"]
    for name in ("temperature", "seq_len"):
        if settings[name] != getattr(config, name):
            raise ValueError(f"the teacher cache was made with {name} = {settings[name]}, this run asks for "
                             f"{getattr(config, name)}; use the same {name} or make a new cache")
