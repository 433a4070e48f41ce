"""LoRA drafts: only the adapters train, a killed run resumes them, and the export is a plain model."""

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from specdistill.models import draft_from_config, tiny_llama
from specdistill.training.config import TrainConfig
from specdistill.training.trainer import train


def _setup(tmp_path):
    target = tiny_llama(vocab_size=64, num_layers=4, hidden_size=32, seed=1)
    base = draft_from_config(target, num_hidden_layers=2)  # stands in for a small pretrained model
    base.save_pretrained(tmp_path / "base")
    pattern = torch.arange(64).repeat(40)[: 32 * 48]
    chunks = ((pattern + torch.randint(0, 2, pattern.shape)) % 64).view(48, 32)
    return target, chunks, str(tmp_path / "base")


def _config(tmp_path, base, **overrides):
    values = dict(target="unused", draft=base, output_dir=str(tmp_path / "run"), seq_len=32, batch_size=4,
                  steps=20, lr=1e-2, warmup_steps=2, save_every=5, bf16=False, lora_rank=4, lora_alpha=8.0)
    return TrainConfig(**(values | overrides))


def test_lora_trains_only_adapters_and_exports_a_plain_model(tmp_path):
    target, chunks, base = _setup(tmp_path)
    result = train(_config(tmp_path, base), target=target, data=chunks, progress=False)
    history = result["history"]
    assert sum(h["loss"] for h in history[-5:]) < 0.8 * sum(h["loss"] for h in history[:5])
    # The checkpoint holds the adapters only; the export has them merged into plain weights.
    assert (tmp_path / "run" / "checkpoint" / "adapter_config.json").exists()
    exported = load_file(tmp_path / "run" / "final" / "model.safetensors")
    assert not any("lora" in key for key in exported)
    loaded = AutoModelForCausalLM.from_pretrained(result["draft_dir"])
    start = AutoModelForCausalLM.from_pretrained(base)
    ids = torch.randint(0, 64, (2, 12))
    torch.testing.assert_close(loaded(ids).logits, result["draft"](ids).logits)
    assert not torch.allclose(loaded(ids).logits, start(ids).logits, atol=1e-3)
    # Frozen parts stay as they were: what LoRA does not touch, and the LM head.
    torch.testing.assert_close(loaded.lm_head.weight, start.lm_head.weight)
    torch.testing.assert_close(loaded.model.norm.weight, start.model.norm.weight)


def test_a_killed_lora_run_resumes_its_adapters(tmp_path, killed_after):
    target, chunks, base = _setup(tmp_path)
    whole = train(_config(tmp_path / "a", base), target=target, data=chunks, progress=False)
    with killed_after(12):
        train(_config(tmp_path / "b", base), target=target, data=chunks, progress=False)
    resumed = train(_config(tmp_path / "b", base), target=target, data=chunks, progress=False)
    assert resumed["resumed_from_step"] == 10
    ids = torch.randint(0, 64, (1, 8))
    torch.testing.assert_close(resumed["draft"](ids).logits, whole["draft"](ids).logits, rtol=1e-4, atol=1e-4)
