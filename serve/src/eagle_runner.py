"""The runner of a feature-conditioned draft (an EAGLE-3-style head, ``specdistill.models.eagle3``).

The head's slot s reads the target's features at position s and token s + 1, so it can
only run where the target has been. The target's own passes (prefill and each verification)
return the features of the positions they fed (``hidden_layers``); the engine hands the
accepted ones to ``take_features``, and they wait, per row, until the next proposal feeds
them with the tokens that follow. Drafting on, the head feeds its own last state as the
next slot's feature. Those drafted slots are never kept: ``rollback`` returns a row to its
last slot fed with the target's features, which the next verification then extends.

Lengths follow the engine's convention for a draft ("tokens held"): a row of length L has
fed slots 0 .. L - 2 (token 0 needs no slot), so ``row.tokens[L:]`` are the tokens to feed
next, each with a waiting feature.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from specdistill.serve import cpu_layer, cpu_linear, kv_rows
from specdistill.serve.llama_fast import tree_mask


@dataclass
class EagleState:
    # The head's one layer, [capacity, kv_heads, S, D]: the first len(lengths) rows are live
    # (``kv_rows``); rows leave and join without copying the others.
    key_store: torch.Tensor
    value_store: torch.Tensor
    lengths: list[int]  # tokens held per row (slots fed + 1)
    verified: list[int]  # the length up to which the fed slots carry the target's features
    # Per row, the target's features [n, F] for the next slots, not fed yet, in the pieces they came in:
    # joined when fed, as a batch that drafts nothing for many steps would copy them again every step.
    pending: list[list[torch.Tensor]]
    last: torch.Tensor | None  # [B, H]: each row's latest head state (the next draft's feature)

    @property
    def keys(self) -> torch.Tensor:  # the live rows [B, kv_heads, S, D]
        return self.key_store[: len(self.lengths)]

    @property
    def values(self) -> torch.Tensor:
        return self.value_store[: len(self.lengths)]


class EagleRunner:
    """Runs an ``Eagle3Head`` as the engine's draft runner (see the module doc)."""

    name = "eagle3"
    max_rows = None

    def __init__(self, head):
        self.head = cpu_linear.with_kernel_linears(head.eval())  # bf16 without bf16 instructions: the kernel
        self.feature_layers = list(head.layer_ids)  # what the target's passes must return
        attention = head.layers[0].self_attn
        self.kv_heads, self.head_dim = attention.kv_heads, attention.head_dim
        self.hidden = head.layer_config.hidden_size
        # bf16 on an x86 CPU: a call of a few tokens runs the layer in C++ (cpu_layer), over fp32 caches
        # (attention in fp32; the target's runner keeps bf16 caches on CPUs with bf16 instructions, for its
        # 30 layers' reads over a long context, where the head's one layer reads little).
        self.cpp_weights = cpu_layer.head_weights(self.head)
        self.cache_dtype = torch.float32 if self.cpp_weights else self.head.fc.weight.dtype

    def start(self, batch_size: int, max_length: int) -> EagleState:
        weight = self.head.fc.weight
        shape = (batch_size, self.kv_heads, max_length, self.head_dim)
        cache = [weight.new_zeros(shape, dtype=self.cache_dtype) for _ in range(2)]
        return EagleState(*cache, [1] * batch_size, [1] * batch_size, [[] for _ in range(batch_size)], None)

    def take_features(self, state: EagleState, features: torch.Tensor, counts: list[int]) -> None:
        """The first ``counts[b]`` of the target's features [B, T, F] of each row, in order."""
        features = features.to(self.head.fc.weight.dtype)
        for b, (waiting, n) in enumerate(zip(state.pending, counts)):
            if n:
                waiting.append(features[b, :n])

    def forward(self, state: EagleState, input_ids: torch.Tensor, keep: list[int] | None):
        """Feed tokens [B, T]: the waiting target features go with a row's first tokens (the
        rest, padding, get zeros); without waiting features, T = 1 and the feature is the
        row's own last state. Logits over the target's vocabulary at ``keep`` (or all)."""
        head = self.head
        batch, width = input_ids.shape
        if any(state.pending):
            empty = head.fc.weight.new_zeros(0, head.fc.weight.shape[1])
            waiting = [torch.cat(pieces) if pieces else empty for pieces in state.pending]
            feature = head.fc(torch.stack([F.pad(p, (0, 0, 0, width - len(p))) for p in waiting]))
            state.verified = [n + len(p) for n, p in zip(state.lengths, waiting)]
            state.pending = [[] for _ in state.pending]
        elif state.last is not None and width == 1:
            feature = state.last[:, None]
        else:
            raise RuntimeError("the head has no features to draft from: the target's passes must hand them over")
        if max(state.lengths) + width > state.keys.shape[2]:
            _grow(state, max(state.lengths) + width)
        slots = torch.tensor(state.lengths, device=input_ids.device)[:, None] - 1 + torch.arange(
            width, device=input_ids.device)  # [B, T]
        mask = torch.arange(int(slots.max()) + 1, device=slots.device) <= slots[:, None, :, None]  # [B, 1, T, S]
        out = self._layer(state, input_ids, feature, slots, slots, mask)
        state.lengths = [n + width for n in state.lengths]
        if keep is None:
            state.last = out[:, -1]
            return head.full_logits(out)
        state.last = out[torch.arange(batch, device=out.device), torch.tensor(keep, device=out.device)]
        return head.full_logits(state.last)

    def forward_tree(self, state: EagleState, input_ids: torch.Tensor, features: torch.Tensor, depth: int,
                     start: int, ancestors: torch.Tensor) -> torch.Tensor:
        """Feed one level of a draft tree after a proposal's first call: node i of row b
        (``input_ids[b, i]``, at ``depth`` >= 1 below the row's last token) reads the head state
        ``features[b, i]`` of its parent, sits at tree slot ``start + i`` and attends to the row's
        verified slots and to the tree slots with ``ancestors[b, i]`` ([B, T, start + T], itself
        included). Tree slots follow every row's slots (they are dropped by ``rollback``).
        Returns the nodes' head states [B, T, H]."""
        width = input_ids.shape[1]
        base = max(state.lengths) - 1  # the first tree slot of every row
        if base + start + width > state.keys.shape[2]:
            _grow(state, base + start + width)
        lengths = torch.tensor(state.lengths, device=input_ids.device)
        positions = (lengths[:, None] - 2 + depth).expand(-1, width)
        slots = (base + start + torch.arange(width, device=input_ids.device)).expand_as(positions)
        mask = tree_mask(lengths - 1, base, ancestors)
        return self._layer(state, input_ids, features.to(self.head.fc.weight.dtype), positions, slots, mask)

    def _layer(self, state: EagleState, input_ids, feature, positions, slots, mask) -> torch.Tensor:
        """The head's layer over tokens [B, T] with their features [B, T, H] at rotary
        ``positions``, its keys written at cache ``slots`` [B, T], attending by ``mask``."""
        head, layer = self.head, self.head.layers[0]
        batch, width = input_ids.shape
        cos, sin = head.rotary(feature.new_empty(0, dtype=self.cache_dtype), positions)
        if self.cpp_weights and input_ids.numel() <= cpu_linear.KERNEL_MAX_TOKENS:
            return cpu_layer.eagle_layer(head.embed(input_ids), feature, self.cpp_weights, cos, sin, state.keys,
                                         state.values, slots, mask)
        q, k, v, residual = layer.qkv(head.embed(input_ids), feature, cos, sin)
        index = slots[:, None, :, None].expand(batch, self.kv_heads, width, self.head_dim)
        state.keys.scatter_(2, index, k.to(self.cache_dtype))
        state.values.scatter_(2, index, v.to(self.cache_dtype))
        span = mask.shape[-1]
        attended = layer.self_attn.attend(q, state.keys[:, :, :span], state.values[:, :, :span], mask, feature.dtype)
        return layer.finish(attended, residual)

    def rollback(self, state: EagleState, lengths: list[int]) -> None:
        # Slots fed with the head's own states are dropped whatever was accepted: the accepted
        # tokens come back with the target's features.
        state.lengths = [min(new, old, verified) for new, old, verified in
                         zip(lengths, state.lengths, state.verified)]

    def select(self, state: EagleState, rows: list[int]) -> None:
        kv_rows.keep_rows([state.key_store, state.value_store], rows, state.lengths)
        for name in ("lengths", "verified", "pending"):
            setattr(state, name, [getattr(state, name)[row] for row in rows])
        state.last = None  # every proposal starts from waiting features, which set it again

    def extend(self, state: EagleState, other: EagleState) -> None:
        state.key_store, state.value_store = kv_rows.add_rows(
            [state.key_store, state.value_store], len(state.lengths), [other.keys, other.values], other.lengths)
        for name in ("lengths", "verified", "pending"):
            setattr(state, name, getattr(state, name) + getattr(other, name))
        state.last = None


def _grow(state: EagleState, needed: int) -> None:
    """Rarely needed: a row past its budget still drafts along with the batch."""
    state.key_store, state.value_store = kv_rows.grow_length([state.key_store, state.value_store],
                                                             len(state.lengths), needed)
