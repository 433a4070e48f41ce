"""What a draft must share with its target (vocabulary, tokenizer), and when logits are a plain
``decoder(x) @ W.T`` that the fused linear loss can take.
"""

from __future__ import annotations

import logging

from transformers import PreTrainedModel

log = logging.getLogger(__name__)


def vocab_size(model: PreTrainedModel) -> int:
    """Width of the model's output distribution."""
    return model.get_output_embeddings().weight.shape[0]


def check_compatible(target: PreTrainedModel, draft: PreTrainedModel, target_tokenizer=None,
                     draft_tokenizer=None) -> None:
    """Speculative decoding and distillation compare distributions token by token,
    so the draft and the target must share a vocabulary (and a tokenizer)."""
    vt, vd = vocab_size(target), vocab_size(draft)
    if vt != vd:
        raise ValueError(
            f"vocabulary mismatch: the target predicts {vt} tokens, the draft {vd}; "
            "the draft must use the target's tokenizer and vocabulary size"
        )
    if target_tokenizer is not None and draft_tokenizer is not None:
        if target_tokenizer.get_vocab() != draft_tokenizer.get_vocab():
            raise ValueError(
                f"tokenizer mismatch: the target's tokenizer has {len(target_tokenizer)} entries and the "
                f"draft's {len(draft_tokenizer)}, and they map tokens to different ids; "
                "use the target's tokenizer for the draft"
            )


def decoder_and_head(model):
    """(decoder, LM-head weight) when logits are exactly ``decoder(x) @ W.T``, else None
    (a head bias, logit soft-capping or scaling needs the plain logits path)."""
    head = model.get_output_embeddings()
    config = model.config
    plain = (
        hasattr(model, "get_decoder") and getattr(head, "bias", None) is None
        and not getattr(config, "final_logit_softcapping", None) and not getattr(config, "logit_scale", None)
    )
    return (model.get_decoder(), head.weight) if plain else None
