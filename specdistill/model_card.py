"""The README.md written beside an exported draft: what it drafts for, how it was
trained, what it measured, and how to use it (ours, HF assisted generation, vLLM)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path


def write_model_card(path: Path, config, history: list[dict], target_name: str) -> Path:
    recent = history[-20:]
    acceptance = sum(h["acceptance"] for h in recent) / len(recent) if recent else float("nan")
    settings = "\n".join(f"| `{name}` | `{value}` |" for name, value in asdict(config).items())
    card = f"""---
library_name: transformers
tags: [speculative-decoding, draft-model, distillation, specdistill]
---
# Draft model for `{target_name}`

A draft for lossless speculative decoding with the target `{target_name}`, distilled with
specdistill (`specdistill train`): {config.divergence} divergence at
T = {config.temperature} on `{config.data}` data, {len(history)} steps of {config.batch_size} x {config.seq_len}
tokens{f", {config.onpolicy_fraction:.0%} of them on the draft's own samples" if config.onpolicy_fraction else ""}.

Expected acceptance Σ min(p, q) on the last {len(recent)} training batches: **{acceptance:.3f}**
(training data; measure held-out acceptance and speed with `specdistill bench --draft {path}`).

## Use

```python
from transformers import AutoModelForCausalLM
draft = AutoModelForCausalLM.from_pretrained("{path}")
# specdistill: SpeculativeGenerator(target, draft, num_draft_tokens="auto", tokenizer=tokenizer)
# Hugging Face: target.generate(ids, assistant_model=draft, max_new_tokens=128)
```

vLLM (the draft shares the target's tokenizer and vocabulary):

```sh
vllm serve <target> \\
  --speculative-config '{{"method": "draft_model", "model": "{path}", "num_speculative_tokens": 4}}'
```

`draft_vocab.json` ranks the token ids of the training answers by frequency; drafting only the
most frequent ones (`draft_vocab=load_draft_vocab(dir, 8192)`) makes draft steps cheaper and stays lossless.

## Training settings

| setting | value |
| --- | --- |
{settings}
"""
    target = Path(path) / "README.md"
    target.write_text(card)
    return target
