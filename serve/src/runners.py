"""Model runners: one model, its KV cache, and rows that each hold their own number of tokens.

A runner (the ``Runner`` protocol) does what the engine needs, for a batch of rows:
    start     a new state (cache) for a number of rows
    forward   feed T tokens per row; row b's go to positions lengths[b] .. lengths[b] + T - 1
    rollback  shorten rows to the given lengths (the rejected drafts disappear)
    select    keep some rows (finished ones leave the batch)
    extend    append another state's rows (admitted requests join a running batch)

``HFRunner`` works with any Hugging Face causal LM through a ``DynamicCache``.
``LlamaRunner`` (``specdistill.serve.llama_fast``) is the lean path for Llama-family
checkpoints. ``make_runner`` picks one.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from specdistill.serve.llama_fast import LlamaRunner, unsupported_reason
from transformers import DynamicCache


class Runner(Protocol):
    """What the engine asks of a model. A state holds at least ``lengths`` (tokens per row)."""

    name: str
    max_rows: int | None  # the most rows one state can hold (None = no limit)

    def start(self, batch_size: int, max_length: int) -> Any: ...

    def forward(self, state, input_ids: torch.Tensor, keep: list[int] | None, hidden_layers=None):
        """Logits [B, T, V], or [B, V] at position ``keep[b]`` of each row; with
        ``hidden_layers`` (target runners), also the hidden states entering those layers,
        concatenated [B, T, len * H], for a feature-conditioned draft."""

    def rollback(self, state, lengths: list[int]) -> None: ...

    def select(self, state, rows: list[int]) -> None: ...

    def extend(self, state, other) -> None:
        """Append ``other``'s rows (a state from ``start`` of this runner) to ``state``."""


@dataclass
class HFState:
    cache: DynamicCache
    lengths: list[int]  # tokens each row holds
    # Logical position of each cache column per row, -1 where the column is a hole
    # (padding, or a draft rejected in this row but not in another). [B, S]
    positions: torch.Tensor


class HFRunner:
    """Any Hugging Face causal LM. Rows of a batch share cache columns; a row whose
    tokens were rolled back while another row's were not leaves holes there, which
    the attention mask hides and the position ids skip. Trailing columns that are
    holes in every row are cropped, so one row (the common case) never has holes and
    runs exactly like ``model.generate``: no mask, no position ids."""

    name = "hf"

    def __init__(self, model):
        self.model = model
        # HF applies a sliding window to cache columns, and holes make columns differ from positions.
        self.max_rows = 1 if _sliding_window(model.config) else None
        params = inspect.signature(model.forward).parameters
        # transformers >= 5.24 names the cache argument ``cache`` (past_key_values is deprecated).
        self._cache_arg = "cache" if "cache" in params else "past_key_values"
        self._logits_to_keep = "logits_to_keep" in params
        self._max_positions = getattr(model.config, "max_position_embeddings", None)

    def start(self, batch_size: int, max_length: int) -> HFState:
        if batch_size > 1 and _sliding_window(self.model.config):
            # HF applies the window to cache columns, and holes make columns differ from positions.
            raise ValueError(f"batches on the generic path do not support sliding-window attention "
                             f"({self.model.config.model_type}); use the fast path or one prompt at a time")
        device = self.model.device
        return HFState(DynamicCache(), [0] * batch_size, torch.empty(batch_size, 0, dtype=torch.long, device=device))

    def forward(self, state: HFState, input_ids: torch.Tensor, keep: list[int] | None,
                hidden_layers: list[int] | None = None):
        """Logits after feeding input_ids [B, T]: [B, T, V] at every position, or [B, V]
        at position ``keep[b]`` of each row when ``keep`` is given. With ``hidden_layers``,
        (logits, HF's ``hidden_states[i]`` for those i concatenated [B, T, len * H])."""
        batch, width = input_ids.shape
        new_positions = torch.tensor(state.lengths, device=input_ids.device)[:, None] + torch.arange(
            width, device=input_ids.device)
        kwargs = {self._cache_arg: state.cache}
        # Right-padding of a lagging row can reach past the context; it is rolled back unread, so it
        # takes the last position (models with learned positions would index past their table).
        past_context = self._max_positions is not None and int(new_positions.max()) >= self._max_positions
        if past_context or bool((state.positions < 0).any()):
            valid = torch.cat([state.positions >= 0, torch.ones_like(new_positions, dtype=torch.bool)], dim=1)
            position_ids = new_positions.clamp(max=self._max_positions - 1) if past_context else new_positions
            kwargs.update(attention_mask=valid.long(), position_ids=position_ids)
        if keep is not None and self._logits_to_keep:
            kwargs["logits_to_keep"] = width - min(keep)  # the head runs on the last positions only
        output = self.model(input_ids=input_ids, use_cache=True, output_hidden_states=bool(hidden_layers), **kwargs)
        logits = output.logits
        state.positions = torch.cat([state.positions, new_positions], dim=1)
        state.lengths = [n + width for n in state.lengths]
        if keep is not None:
            index = torch.tensor(keep, device=logits.device) - (width - logits.shape[1])
            logits = logits[torch.arange(batch, device=logits.device), index]
        if not hidden_layers:
            return logits
        return logits, torch.cat([output.hidden_states[i] for i in hidden_layers], dim=-1)

    def rollback(self, state: HFState, lengths: list[int]) -> None:
        lengths = [min(new, old) for new, old in zip(lengths, state.lengths)]
        if lengths == state.lengths:
            return
        limit = torch.tensor(lengths, device=state.positions.device)[:, None]
        state.positions = state.positions.masked_fill(state.positions >= limit, -1)
        state.lengths = lengths
        self._crop_trailing_holes(state)

    def select(self, state: HFState, rows: list[int]) -> None:
        index = torch.tensor(rows, device=state.positions.device)
        state.cache.batch_select_indices(index)
        state.positions = state.positions[index]
        state.lengths = [state.lengths[row] for row in rows]
        self._crop_trailing_holes(state)

    def extend(self, state: HFState, other: HFState) -> None:
        """Rows of ``other`` join ``state``; the shorter side's missing columns are holes."""
        if self.max_rows and len(state.lengths) + len(other.lengths) > self.max_rows:
            raise ValueError(f"this runner holds at most {self.max_rows} row(s) ({self.model.config.model_type} "
                             "with sliding-window attention on the generic path)")
        width = max(state.positions.shape[1], other.positions.shape[1])
        mine, theirs = _key_values(state), _key_values(other)
        if mine or theirs:
            template = (mine or theirs)[0][0]
            mine = mine or _empty_key_values(template, len(state.lengths), len(theirs))
            theirs = theirs or _empty_key_values(template, len(other.lengths), len(mine))
            state.cache = DynamicCache(ddp_cache_data=[
                tuple(torch.cat([_pad_columns(a, width), _pad_columns(b, width)]) for a, b in zip(ours, new))
                for ours, new in zip(mine, theirs)])
        state.positions = torch.cat([F.pad(state.positions, (0, width - state.positions.shape[1]), value=-1),
                                     F.pad(other.positions, (0, width - other.positions.shape[1]), value=-1)])
        state.lengths = state.lengths + other.lengths

    def _crop_trailing_holes(self, state: HFState) -> None:
        used = (state.positions >= 0).any(dim=0).nonzero()
        keep = int(used.max()) + 1 if used.numel() else 0
        extra = state.positions.shape[1] - keep
        if extra > 0:
            # A negative crop drops from the end on every transformers version (5.x refuses a positive one).
            state.cache.crop(-extra)
            state.positions = state.positions[:, :keep]


class NoDraft:
    """The draft runner when there is no draft: holds nothing and runs nothing."""

    name = "none"
    max_rows = None

    def start(self, batch_size: int, max_length: int) -> HFState:
        return HFState(None, [0] * batch_size, torch.empty(batch_size, 0, dtype=torch.long))

    def forward(self, state, input_ids, keep, hidden_layers=None):
        return None

    def rollback(self, state, lengths: list[int]) -> None:
        pass

    def select(self, state, rows: list[int]) -> None:
        state.lengths = [state.lengths[row] for row in rows]

    def extend(self, state, other) -> None:
        state.lengths = state.lengths + other.lengths


def _key_values(state: HFState) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer (keys, values) [B, H, S, D]; empty while the cache holds nothing (one-token prompts)."""
    return [(layer.keys, layer.values) for layer in state.cache.layers if layer.is_initialized]


def _empty_key_values(template: torch.Tensor, rows: int, layers: int):
    empty = template.new_zeros(rows, template.shape[1], 0, template.shape[3])
    return [(empty, empty)] * layers


def _pad_columns(tensor: torch.Tensor, width: int) -> torch.Tensor:
    return F.pad(tensor, (0, 0, 0, width - tensor.shape[2]))


def _sliding_window(config) -> bool:
    if getattr(config, "sliding_window", None) is None:
        return False
    if getattr(config, "layer_types", None) is not None:
        return "sliding_attention" in config.layer_types
    return getattr(config, "use_sliding_window", True)


def make_runner(model, fast_path: bool | str = "auto", compile: bool = False, vocab_subset=None):
    """The lean Llama runner when ``fast_path`` is True, or "auto" and the model is a
    supported Llama-family checkpoint; otherwise the generic Hugging Face runner.
    ``vocab_subset`` (lean runner only) restricts the LM head to those token ids."""
    if fast_path not in (True, False, "auto"):
        raise ValueError(f"fast_path must be True, False or 'auto', got {fast_path!r}")
    reason = unsupported_reason(model)
    if fast_path is True and reason:
        raise ValueError(f"fast_path=True but {reason}; use fast_path='auto' or False for the generic path")
    if fast_path is False or reason:
        for option, value in (("compile=True", compile), ("a draft vocabulary subset", vocab_subset is not None)):
            if value:
                raise ValueError(f"{option} needs the fast path (a Llama-family model and fast_path True or 'auto')")
        return HFRunner(model)
    return LlamaRunner(model, compile=compile, vocab_subset=vocab_subset)
