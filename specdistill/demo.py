"""``specdistill demo``, the README's main command.

On held-out prompts it first measures the shipped default draft (an EAGLE-3 head, drafting a tree
unless ``--draft-tree none``) against the target alone (HF ``generate`` and our engine); then it
prunes a draft from the target, measures it, distills it for a CPU-sized budget, measures it again,
saves it, and prints one table ending with one JSON line (its headline figures: the shipped draft's).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from specdistill.bench import (
    MeasureConfig,
    decode_dtype,
    measure_hf_baseline,
    measure_prompts,
    measure_row,
    print_report,
)
from specdistill.measure import warm_up
from specdistill.models import DEFAULT_TARGET, load_draft_vocab, load_target, prune_draft
from specdistill.models.drafts import DEFAULT_DRAFT, load_draft
from specdistill.options import nested
from specdistill.training.config import TrainConfig
from specdistill.training.model_card import update_model_card
from specdistill.training.trainer import train, training_rows


@dataclass
class DemoConfig:
    """Prune, measure, distill, measure again: every training flag, with demo defaults."""

    train: TrainConfig = nested(TrainConfig, output_dir="runs/demo", data="target", batch_size=4, lr=1e-3,
                                max_minutes=10.0)
    measure: MeasureConfig = nested(MeasureConfig, num_prompts=8)


SHIPPED_ROW = "shipped draft (EAGLE-3 head)"


def run_demo(config: DemoConfig) -> dict:
    train_config, measure = config.train, config.measure
    dtype = decode_dtype(measure.dtype)
    print(f"loading target {train_config.target} ...", flush=True)
    target, tokenizer = load_target(train_config.target)
    prompts = measure_prompts(measure)
    keep = [int(x) for x in train_config.keep_layers.split(",") if x.strip()]
    draft = prune_draft(target, keep)
    print(f"draft: target layers {keep} + embeddings/head "
          f"({sum(p.numel() for p in draft.parameters()) / 1e6:.1f}M params)", flush=True)

    k, max_new, confidence = measure.k, measure.max_new_tokens, measure.draft_confidence
    rows = measure_hf_baseline(target, tokenizer, prompts, max_new, dtype)
    rows["target alone (our engine)"] = measure_row(target, None, tokenizer, prompts, 0, max_new)
    shipped = SHIPPED_ROW if train_config.target == DEFAULT_TARGET else None
    if shipped:  # first what the package gives out of the box, then a distillation of one's own
        head, _ = load_draft(DEFAULT_DRAFT, target, dtype)
        warm_up(target, head, tokenizer)
        result = measure_row(target, head, tokenizer, prompts, k, max_new, draft_confidence=confidence,
                          draft_tree=measure.draft_tree, draft_retrieval=measure.draft_retrieval)
        shipped = f"shipped draft, tree {result['draft_tree']}" if result["draft_tree"] else shipped
        rows[shipped] = result
        print(f"shipped draft: {rows[shipped]['tokens_per_s']:.1f} tok/s, tau {rows[shipped]['tau']:.2f}; "
              "now a short distillation of a pruned draft of your own", flush=True)
    warm_up(target, draft.to(dtype), tokenizer)
    rows["pruned draft, before"] = measure_row(target, draft, tokenizer, prompts, k, max_new,
                                            draft_confidence=confidence)

    result = _distill(train_config, target, tokenizer, dtype)
    draft = result["draft"].to(dtype)
    rows["distilled draft, after"] = measure_row(target, draft, tokenizer, prompts, k, max_new,
                                              draft_confidence=confidence)
    # The cost-aware policy picks k per step from measured acceptance and step costs.
    rows["distilled, auto k"] = measure_row(target, draft, tokenizer, prompts, "auto", max_new,
                                         draft_confidence=confidence)
    distilled = "distilled draft, after"
    vocab = load_draft_vocab(result["draft_dir"], measure.draft_vocab_size) if measure.draft_vocab_size else None
    if vocab is not None:
        distilled = f"distilled, draft vocab {len(vocab)}"
        rows[distilled] = measure_row(target, draft, tokenizer, prompts, k, max_new, draft_confidence=confidence,
                              draft_vocab=vocab)
    if result["resumed_from_step"]:
        print(f"(resumed an earlier run in {train_config.output_dir} at step {result['resumed_from_step']})")
    print(f"\ndistilled draft saved to {result['draft_dir']} after {result['steps']} steps")
    extra = {"train_steps": result["steps"], "train_expected_acceptance": result["history"][-1]["acceptance"],
             "draft_dir": result["draft_dir"], "data": train_config.data, "distilled_row": distilled}
    summary = print_report(rows, shipped or distilled, measure, extra)
    (Path(train_config.output_dir) / "demo_result.json").write_text(json.dumps(summary, indent=2))
    mine = summary["rows"][distilled]
    update_model_card(Path(result["draft_dir"]), {
        "source": f"specdistill demo, {len(prompts)} prompts", "alpha": mine["alpha"], "tau": mine["tau"],
        "tokens_per_s": mine["tokens_per_s"], "speedup_vs_hf_generate": mine["speedup"],
        "hf_generate_tokens_per_s": summary["hf_generate_tokens_per_s"], "num_draft_tokens": k,
        "decode_dtype": measure.dtype})
    return summary


def _distill(train_config: TrainConfig, target, tokenizer, dtype) -> dict:
    # Generated while the target is in the fast decoding dtype; the logits it trains on come later, in fp32.
    rows = training_rows(train_config, target, tokenizer)
    target.float()
    result = train(train_config, target=target, tokenizer=tokenizer, data=rows)
    target.to(dtype)
    return result
