"""Drafts made from a target: layer-pruned copies, drafts from a smaller config, and tiny random
Llamas for tests.
"""

from __future__ import annotations

import logging

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel

log = logging.getLogger(__name__)


def decoder_layers(model: PreTrainedModel) -> torch.nn.ModuleList:
    """The list of decoder blocks of a Llama-style model (``model.model.layers``)."""
    layers = getattr(getattr(model, "model", None), "layers", None)
    if not isinstance(layers, torch.nn.ModuleList):
        raise ValueError(
            f"{type(model).__name__} has no `model.layers`; layer pruning supports Llama-style "
            "decoders (Llama, Qwen2, Mistral, SmolLM, Gemma...). Build the draft from a config instead."
        )
    return layers


def prune_draft(target: PreTrainedModel, keep_layers: list[int]) -> PreTrainedModel:
    """A draft that keeps some of the target's decoder layers, plus its embeddings,
    final norm and LM head (copies, so training the draft leaves the target alone).
    It shares the target's tokenizer. Negative indices count from the last layer."""
    layers = decoder_layers(target)
    n = len(layers)
    picked = [i % n for i in keep_layers if -n <= i < n]
    if not keep_layers or len(picked) != len(keep_layers) or len(set(picked)) != len(picked):
        raise ValueError(f"keep_layers {keep_layers} must be distinct layer indices in [-{n}, {n})")
    config = AutoConfig.for_model(**target.config.to_dict())
    config.num_hidden_layers = len(picked)
    if getattr(config, "layer_types", None):
        config.layer_types = [config.layer_types[i] for i in picked]
    draft = AutoModelForCausalLM.from_config(config, dtype=target.dtype)
    state = {}
    for key, value in target.state_dict().items():
        prefix, sep, rest = key.partition(".layers.")
        if not sep:
            state[key] = value
            continue
        index, _, tail = rest.partition(".")
        if int(index) in picked:
            state[f"{prefix}.layers.{picked.index(int(index))}.{tail}"] = value
    draft.load_state_dict(state, strict=True)
    draft.config.pruned_from_layers = picked
    return draft.eval()


def draft_from_config(target: PreTrainedModel, **overrides) -> PreTrainedModel:
    """A freshly initialised draft with the target's architecture and vocabulary,
    smaller by the given config overrides (e.g. ``num_hidden_layers=2``)."""
    config = AutoConfig.for_model(**{**target.config.to_dict(), **overrides})
    if getattr(config, "layer_types", None):
        config.layer_types = config.layer_types[: config.num_hidden_layers]
    return AutoModelForCausalLM.from_config(config, dtype=target.dtype).eval()


def tiny_llama(vocab_size: int = 64, num_layers: int = 2, hidden_size: int = 32, seed: int = 0,
               max_positions: int = 512) -> PreTrainedModel:
    """A tiny random Llama, for tests that must run in seconds."""
    from transformers import LlamaConfig

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=max_positions, bos_token_id=0, eos_token_id=1, pad_token_id=1,
        tie_word_embeddings=False,
    )
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()


def tiny_pair(vocab_size: int = 64, seed: int = 0):
    """A tiny random (target, draft) pair with a shared vocabulary: a 4-layer target
    and a draft pruned from it (layers 0 and 3)."""
    target = tiny_llama(vocab_size=vocab_size, num_layers=4, seed=seed)
    return target, prune_draft(target, [0, -1])
