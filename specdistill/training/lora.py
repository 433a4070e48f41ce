"""LoRA adapters on a draft, through peft: for drafts started from an existing small
pretrained model, where a few low-rank updates are cheaper to train (and to keep)
than every weight. Exported drafts are always plain models, adapters merged."""

from __future__ import annotations

import copy
from pathlib import Path

from peft import LoraConfig, PeftModel, get_peft_model


def add_lora(draft, rank: int, alpha: float, targets: str) -> PeftModel:
    """The draft with fresh LoRA adapters of ``rank`` on ``targets`` ('all-linear', which
    leaves the LM head alone, or comma-separated module names); only they train."""
    modules = "all-linear" if targets == "all-linear" else [name.strip() for name in targets.split(",") if name]
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=modules, lora_dropout=0.0, bias="none",
                        task_type="CAUSAL_LM")
    return get_peft_model(draft, config)


def has_adapters(checkpoint: Path) -> bool:
    return (Path(checkpoint) / "adapter_config.json").exists()


def load_adapters(draft, checkpoint: Path) -> PeftModel:
    """The draft with the trainable adapters a LoRA checkpoint saved."""
    return PeftModel.from_pretrained(draft, checkpoint, is_trainable=True)


def plain_model(draft):
    """The draft as a plain model: a LoRA draft's adapters merged into a copy of its
    weights (the training copy keeps its adapters); any other draft as it is."""
    if isinstance(draft, PeftModel):
        return copy.deepcopy(draft).merge_and_unload()
    return draft
