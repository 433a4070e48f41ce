"""Entry points that measure drafts: ``specdistill demo`` and ``specdistill bench``.

The demo is the README's main command: prune a draft from the default target,
measure it, distill it for a CPU-sized budget, measure it again on held-out
prompts, save it, and print a before/after table ending with one JSON line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from specdistill.eval import measure_speculative, measure_target, predicted_speedup, warm_up
from specdistill.models import DEFAULT_TARGET, load_target, prune_draft
from specdistill.prompts import HELDOUT_PROMPTS
from specdistill.train import TrainConfig, train

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


@dataclass
class BenchConfig:
    """Measure a saved draft against its target."""

    draft: str = "runs/demo/final"  # a local HF draft directory
    target: str = DEFAULT_TARGET
    num_draft_tokens: int = 4
    max_new_tokens: int = 64
    num_prompts: int = 12  # held-out chat prompts
    temperature: float = 0.0
    dtype: str = "fp32"  # fp32 or bf16, for both models while decoding


@dataclass
class DemoConfig:
    """Prune, measure, distill, measure again."""

    target: str = DEFAULT_TARGET
    keep_layers: str = "0,1,2,-1"
    output_dir: str = "runs/demo"
    steps: int = 200
    batch_size: int = 4
    seq_len: int = 256
    lr: float = 1e-3
    max_minutes: float = 10.0  # distillation stops after this much wall time
    num_draft_tokens: int = 4
    draft_confidence: float = 0.4  # stop drafting below this draft probability (HF assisted's default)
    max_new_tokens: int = 64
    num_prompts: int = 8  # held-out chat prompts used to measure
    dtype: str = "bf16"  # fp32 or bf16, for both models while decoding (bf16 verifies k tokens at ~1 step's cost)
    seed: int = 0


def _measure(target, draft, tokenizer, prompts, k, max_new_tokens, temperature=0.0, draft_confidence=0.0) -> dict:
    result = measure_speculative(target, draft, tokenizer, prompts, num_draft_tokens=k,
                                 max_new_tokens=max_new_tokens, temperature=temperature,
                                 draft_confidence=draft_confidence)
    result.pop("stats")
    return result


def _decode_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {name!r}")
    return DTYPES[name]


def _row(name: str, tokens_per_s: float, baseline: float, alpha="-", tau="-") -> str:
    return f"{name:<28}{alpha:>8}{tau:>8}{tokens_per_s:>10.2f}{tokens_per_s / baseline:>9.2f}x"


def _report(baseline: dict, before: dict, after: dict, config: DemoConfig, extra: dict) -> dict:
    base = baseline["tokens_per_s"]
    print(f"\n{'':<28}{'alpha':>8}{'tau':>8}{'tok/s':>10}{'speedup':>10}")
    print(_row("target alone (HF generate)", base, base))
    rows = [("pruned draft, before", before), ("distilled draft, after", after)]
    if "after_auto" in extra:
        rows.append(("distilled, auto k", extra.pop("after_auto")))
    for name, r in rows:
        print(_row(name, r["tokens_per_s"], base, f"{r['alpha']:.3f}", f"{r['tau']:.2f}"))
    cost_ratio = after["draft_step_seconds"] / baseline["step_seconds"]
    # With the confidence stop, fewer than k drafts are proposed: predict with the mean k used.
    predicted = predicted_speedup(after["alpha"], after["mean_k"], cost_ratio)
    print(f"\nper-position acceptance after: {after['per_position_acceptance']}")
    print(f"cost ratio c = {cost_ratio:.3f}, mean k = {after['mean_k']:.2f}; "
          f"predicted speedup from alpha, k and c: {predicted:.2f}x")
    summary = {
        "target_tokens_per_s": round(base, 2),
        "before": {k: before[k] for k in ("alpha", "tau", "tokens_per_s")},
        "after": {k: after[k] for k in ("alpha", "tau", "tokens_per_s", "per_position_acceptance")},
        "speedup_before": round(before["tokens_per_s"] / base, 3),
        "speedup_after": round(after["tokens_per_s"] / base, 3),
        "predicted_speedup_after": round(predicted, 3),
        "cost_ratio": round(cost_ratio, 3),
        "num_draft_tokens": config.num_draft_tokens,
        "mean_k_after": round(after["mean_k"], 2),
        "draft_confidence": config.draft_confidence,
        "greedy_outputs_equal_target": [r["outputs"] == baseline["outputs"] for r in (before, after)],
        **extra,
    }
    print(json.dumps(summary))
    return summary


def run_demo(config: DemoConfig) -> dict:
    dtype = _decode_dtype(config.dtype)
    print(f"loading target {config.target} ...", flush=True)
    target, tokenizer = load_target(config.target)
    prompts = HELDOUT_PROMPTS[: config.num_prompts]
    keep = [int(x) for x in config.keep_layers.split(",") if x.strip()]
    draft = prune_draft(target, keep)
    print(f"draft: target layers {keep} + embeddings/head "
          f"({sum(p.numel() for p in draft.parameters()) / 1e6:.1f}M params)", flush=True)

    # The target alone in fp32 too: on some CPUs plain decoding is faster in fp32, and
    # the speedup is only honest against the faster of the two.
    warm_up(target, draft, tokenizer)
    fp32_baseline = measure_target(target, tokenizer, prompts, config.max_new_tokens)
    target.to(dtype)
    warm_up(target, draft.to(dtype), tokenizer)
    baseline = measure_target(target, tokenizer, prompts, config.max_new_tokens)
    before = _measure(target, draft, tokenizer, prompts, config.num_draft_tokens, config.max_new_tokens,
                      draft_confidence=config.draft_confidence)

    train_config = TrainConfig(
        target=config.target, keep_layers=config.keep_layers, output_dir=config.output_dir, steps=config.steps,
        batch_size=config.batch_size, seq_len=config.seq_len, lr=config.lr, max_minutes=config.max_minutes,
        seed=config.seed, save_every=max(1, config.steps // 4),
    )
    target.float()
    result = train(train_config, target=target, tokenizer=tokenizer)
    draft = result["draft"]
    target.to(dtype)
    after = _measure(target, draft.to(dtype), tokenizer, prompts, config.num_draft_tokens, config.max_new_tokens,
                     draft_confidence=config.draft_confidence)
    # The cost-aware policy picks k per step from measured acceptance and step costs.
    after_auto = _measure(target, draft, tokenizer, prompts, "auto", config.max_new_tokens,
                          draft_confidence=config.draft_confidence)
    if result["resumed_from_step"]:
        print(f"(resumed an earlier run in {config.output_dir} at step {result['resumed_from_step']})")
    print(f"\ndistilled draft saved to {result['draft_dir']} after {result['steps']} steps")
    history = result["history"]
    extra = {"train_steps": result["steps"], "train_expected_acceptance": history[-1]["acceptance"],
             "draft_dir": result["draft_dir"], "decode_dtype": config.dtype,
             "after_auto_k": {k: after_auto[k] for k in ("alpha", "tau", "tokens_per_s")},
             "speedup_after_auto_k": round(after_auto["tokens_per_s"] / baseline["tokens_per_s"], 3),
             "target_fp32_tokens_per_s": round(fp32_baseline["tokens_per_s"], 2),
             "speedup_after_vs_best_target": round(
                 after["tokens_per_s"] / max(baseline["tokens_per_s"], fp32_baseline["tokens_per_s"]), 3)}
    summary = _report(baseline, before, after, config, {**extra, "after_auto": after_auto})
    (Path(config.output_dir) / "demo_result.json").write_text(json.dumps(summary, indent=2))
    return summary


def run_bench(config: BenchConfig) -> dict:
    dtype = _decode_dtype(config.dtype)
    if not Path(config.draft).is_dir():
        raise FileNotFoundError(f"draft {config.draft!r} is not a directory; train one with `specdistill demo` "
                                "or `specdistill train`, or pass --draft")
    target, tokenizer = load_target(config.target, dtype=dtype)
    draft = AutoModelForCausalLM.from_pretrained(config.draft, dtype=dtype).eval()
    prompts = HELDOUT_PROMPTS[: config.num_prompts]
    warm_up(target, draft, tokenizer)
    baseline = measure_target(target, tokenizer, prompts, config.max_new_tokens)
    spec = _measure(target, draft, tokenizer, prompts, config.num_draft_tokens, config.max_new_tokens,
                    config.temperature)
    base = baseline["tokens_per_s"]
    cost_ratio = spec["draft_step_seconds"] / baseline["step_seconds"]
    print(f"\n{'':<28}{'alpha':>8}{'tau':>8}{'tok/s':>10}{'speedup':>10}")
    print(_row("target alone (HF generate)", base, base))
    print(_row(f"speculative k={config.num_draft_tokens}", spec["tokens_per_s"], base, f"{spec['alpha']:.3f}",
               f"{spec['tau']:.2f}"))
    summary = {
        "target_tokens_per_s": round(base, 2),
        **{k: spec[k] for k in ("alpha", "tau", "tokens_per_s", "per_position_acceptance")},
        "speedup": round(spec["tokens_per_s"] / base, 3),
        "predicted_speedup": round(predicted_speedup(spec["alpha"], config.num_draft_tokens, cost_ratio), 3),
        "cost_ratio": round(cost_ratio, 3),
        "temperature": config.temperature,
    }
    print(json.dumps(summary))
    return summary
