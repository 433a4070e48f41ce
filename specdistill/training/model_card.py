"""The README.md written beside an exported draft: what it drafts for, how it was
trained, what it measured, and how to use it (ours, HF assisted generation, vLLM)."""

from __future__ import annotations

import json
import re
from dataclasses import asdict
from pathlib import Path

# The card's figures, by what they are; anything else in a figures dict is left out.
FIGURE_NAMES = {
    "source": "measured by",
    "eval_alpha": "held-out acceptance α = E Σ min(p, q), teacher-forced on the target's answers",
    "eval_alpha_greedy": "held-out greedy acceptance (draft argmax = target argmax)",
    "eval_predicted_tau": "predicted tokens per target step τ for k = 1..8 (teacher-forced)",
    "eval_measured_tau": "measured τ, decoding held-out prompts",
    "eval_tokens_per_s": "measured tokens/s, decoding held-out prompts (training dtype)",
    "alpha": "measured acceptance α, decoding held-out prompts",
    "tau": "measured τ (tokens per target step)",
    "tokens_per_s": "measured tokens/s",
    "hf_generate_tokens_per_s": "target alone, HF generate (the faster of fp32 and bf16), tokens/s",
    "speedup_vs_hf_generate": "speedup over HF generate",
    "num_draft_tokens": "drafts per step k",
    "decode_dtype": "decoding dtype",
}
NOT_MEASURED = ("Not measured on held-out prompts yet: train with `--eval-every N`, or run "
                "`specdistill bench --draft {path}`, which writes its figures here.")


def measured_section(path: Path, figures: dict | None) -> str:
    rows = [f"| {label} | `{figures[key]}` |" for key, label in FIGURE_NAMES.items() if figures and key in figures]
    if not rows:
        return "## Measured\n\n" + NOT_MEASURED.format(path=path) + "\n"
    return "## Measured\n\n| figure | value |\n| --- | --- |\n" + "\n".join(rows) + "\n"


def update_model_card(path: Path, figures: dict) -> None:
    """Put measured figures into the card beside a draft (kept in ``measured.json`` too)."""
    card = Path(path) / "README.md"
    if not card.exists():
        return
    stored = Path(path) / "measured.json"
    merged = (json.loads(stored.read_text()) if stored.exists() else {}) | figures
    stored.write_text(json.dumps(merged, indent=2))
    text = re.sub(r"## Measured\n.*?(?=\n## )", lambda _: measured_section(path, merged), card.read_text(),
                  flags=re.S)
    card.write_text(text)


def write_model_card(path: Path, config, history: list[dict], target_name: str, figures: dict | None = None) -> Path:
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
(training data, an optimistic figure; the held-out figures are below).

{measured_section(path, figures)}
{use_section(path, config)}
## Training settings

| setting | value |
| --- | --- |
{settings}
"""
    if figures:
        (Path(path) / "measured.json").write_text(json.dumps(figures, indent=2))
    target = Path(path) / "README.md"
    target.write_text(card)
    return target


def use_section(path, config) -> str:
    if getattr(config, "draft_type", "lm") == "eagle3":
        return _HEAD_USE.format(path=path)
    return _LM_USE.format(path=path)


_HEAD_USE = """## Use

An EAGLE-3 head in the speculators format: it reads the target's hidden states, so it drafts
only for this target. The target's token embeddings are not stored; they are shared.

```python
from specdistill.drafts import load_draft
head, _ = load_draft("{path}", target)
# specdistill: SpeculativeGenerator(target, head, num_draft_tokens="auto", tokenizer=tokenizer)
```

vLLM loads the directory as it is:

```sh
vllm serve <target> \\
  --speculative-config '{{"method": "eagle3", "model": "{path}", "num_speculative_tokens": 4}}'
```
"""

_LM_USE = """## Use

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
"""
