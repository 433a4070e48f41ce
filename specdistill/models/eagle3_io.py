"""Save and load an EAGLE-3 head in vllm-project/speculators' format, which vLLM serves as is.

A directory holds ``config.json`` (``speculators_model_type: "eagle3"``, the head's layer as
a nested HF config, the draft vocabulary size, the target layers it reads, and
``speculators_config`` naming the proposal method and the verifier) and
``model.safetensors`` (``fc``, ``layers.0.*``, ``norm``, ``lm_head``, and the vocabulary maps
``d2t``, an offset per draft id, and ``t2d``, a mask over target ids). The token embeddings
are the target's and are not stored: the head is loaded onto its target. With vLLM::

    vllm serve HuggingFaceTB/SmolLM2-135M-Instruct \
        --speculative-config '{"method": "eagle3", "model": "DIR", "num_speculative_tokens": 4}'
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import AutoConfig

from specdistill.models.eagle3 import Eagle3Head


def is_head_dir(path: str | Path) -> bool:
    config = Path(path) / "config.json"
    return config.exists() and json.loads(config.read_text()).get("speculators_model_type") == "eagle3"


def load_head(path: str | Path, target, dtype: torch.dtype | None = None) -> Eagle3Head:
    """The head saved in ``path``, on ``target`` (its embeddings, device and, unless
    ``dtype`` is given, dtype). Errors say what does not fit."""
    path = Path(path)
    if not is_head_dir(path):
        raise ValueError(f"{path} is not an EAGLE-3 head (its config.json has no speculators_model_type 'eagle3')")
    config = json.loads((path / "config.json").read_text())
    layer = AutoConfig.for_model(**config["transformer_layer_config"])
    state = load_file(path / "model.safetensors")
    missing = {"fc.weight", "lm_head.weight", "d2t", "norm.weight"} - state.keys()
    if missing:
        raise ValueError(f"{path}/model.safetensors lacks {sorted(missing)}; it is not a complete EAGLE-3 head")
    draft_ids = torch.arange(len(state["d2t"])) + state["d2t"]
    embed = target.get_input_embeddings().weight
    if embed.shape[0] != layer.vocab_size or embed.shape[1] != layer.hidden_size:
        raise ValueError(f"{path} was made for a target with vocabulary {layer.vocab_size} and hidden size "
                         f"{layer.hidden_size}; this target has {embed.shape[0]} and {embed.shape[1]}")
    head = Eagle3Head(layer, config["eagle_aux_hidden_state_layer_ids"], draft_ids, embed,
                      config.get("norm_before_residual", False),
                      config["speculators_config"]["verifier"].get("name_or_path", ""))
    state.pop("embed_tokens.weight", None)  # a copy of the target's, where a trainer saved one
    result = head.load_state_dict(state, strict=False)  # t2d is derived from d2t when absent
    wrong = [key for key in result.missing_keys if key != "t2d"] + result.unexpected_keys
    if wrong:
        raise ValueError(f"{path}/model.safetensors does not match an EAGLE-3 head of its config: {wrong[:6]}")
    head.source = path  # what else its directory holds (a retrieval corpus) serves with it
    return head.to(device=target.device, dtype=dtype or target.dtype).eval()
