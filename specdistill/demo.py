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
from specdistill.models import DEFAULT_TARGET, load_draft_vocab, load_target, prune_draft
from specdistill.prompts import HELDOUT_PROMPTS
from specdistill.train import TrainConfig, train, training_rows

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
    dtype: str = "bf16"  # fp32 or bf16, for both models while decoding
    draft_confidence: float = 0.4  # stop drafting below this draft probability (HF assisted's default)
    draft_vocab_size: int = 8192  # draft only the N most frequent training tokens (0 = all; needs draft_vocab.json)


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
    data: str = "target"  # 'target' (the target's answers to chat prompts), 'stdlib', a text file/folder or dataset
    generate_tokens: int = 40000  # with data 'target': answer tokens to generate first (cached in output_dir)
    num_draft_tokens: int = 4
    draft_confidence: float = 0.4  # stop drafting below this draft probability (HF assisted's default)
    draft_vocab_size: int = 8192  # after training, draft only the N most frequent training tokens (0 = all)
    max_new_tokens: int = 64
    num_prompts: int = 8  # held-out chat prompts used to measure
    dtype: str = "bf16"  # fp32 or bf16, for both models while decoding (bf16 verifies k tokens at ~1 step's cost)
    seed: int = 0


def _measure(target, draft, tokenizer, prompts, k, max_new_tokens, temperature=0.0, draft_confidence=0.0,
             draft_vocab=None) -> dict:
    result = measure_speculative(target, draft, tokenizer, prompts, num_draft_tokens=k,
                                 max_new_tokens=max_new_tokens, temperature=temperature,
                                 draft_confidence=draft_confidence, draft_vocab=draft_vocab)
    result.pop("stats")
    return result


def _decode_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {name!r}")
    return DTYPES[name]


def _row(name: str, result: dict, baseline: float) -> str:
    alpha = f"{result['alpha']:.3f}" if "alpha" in result and result.get("mean_k") else "-"
    tau = f"{result['tau']:.2f}" if "tau" in result and result.get("mean_k") else "-"
    rate = result["tokens_per_s"]
    return f"{name:<34}{alpha:>8}{tau:>8}{rate:>10.2f}{rate / baseline:>9.2f}x"


def _report(rows: dict[str, dict], main: str, config: DemoConfig, extra: dict) -> dict:
    """The table (speedups over HF generate, the first row), the prediction for the
    ``main`` row, and one JSON line."""
    base = rows["target alone (HF generate)"]["tokens_per_s"]
    print(f"\n{'':<34}{'alpha':>8}{'tau':>8}{'tok/s':>10}{'speedup':>10}")
    for name, result in rows.items():
        print(_row(name, result, base))
    alone, after = rows["target alone (our engine)"], rows[main]
    # c against the target step of the same engine; with the confidence stop fewer than k
    # drafts are proposed, so predict with the mean k used.
    cost_ratio = after["draft_step_seconds"] * alone["tokens_per_s"]
    predicted = predicted_speedup(after["alpha"], after["mean_k"], cost_ratio)
    measured = after["tokens_per_s"] / alone["tokens_per_s"]
    print(f"\nper-position acceptance ({main}): {after['per_position_acceptance']}")
    print(f"cost ratio c = {cost_ratio:.3f}, mean k = {after['mean_k']:.2f}; over the target alone on our engine: "
          f"predicted {predicted:.2f}x from alpha, k and c, measured {measured:.2f}x")
    summary = {
        "target_tokens_per_s": round(base, 2),
        "rows": {name: {key: r[key] for key in ("alpha", "tau", "tokens_per_s", "mean_k") if key in r}
                 | {"speedup": round(r["tokens_per_s"] / base, 3)} for name, r in rows.items()},
        "main_row": main,
        "speedup_after": round(after["tokens_per_s"] / base, 3),
        "per_position_acceptance_after": after["per_position_acceptance"],
        "cost_ratio": round(cost_ratio, 3),
        "predicted_speedup_over_our_target": round(predicted, 3),
        "measured_speedup_over_our_target": round(measured, 3),
        "num_draft_tokens": config.num_draft_tokens,
        "draft_confidence": config.draft_confidence,
        "greedy_outputs_equal_target": {name: r["outputs"] == rows["target alone (HF generate)"]["outputs"]
                                        for name, r in rows.items() if "outputs" in r},
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
    k, max_new, confidence = config.num_draft_tokens, config.max_new_tokens, config.draft_confidence
    rows = {"target alone (HF generate)": measure_target(target, tokenizer, prompts, max_new),
            "target alone (our engine)": _measure(target, None, tokenizer, prompts, 0, max_new),
            "pruned draft, before": _measure(target, draft, tokenizer, prompts, k, max_new,
                                             draft_confidence=confidence)}

    result = _distill(config, target, tokenizer, dtype)
    draft = result["draft"].to(dtype)
    rows["distilled draft, after"] = _measure(target, draft, tokenizer, prompts, k, max_new,
                                              draft_confidence=confidence)
    # The cost-aware policy picks k per step from measured acceptance and step costs.
    rows["distilled, auto k"] = _measure(target, draft, tokenizer, prompts, "auto", max_new,
                                         draft_confidence=confidence)
    main = "distilled draft, after"
    vocab = load_draft_vocab(result["draft_dir"], config.draft_vocab_size) if config.draft_vocab_size else None
    if vocab is not None:
        main = f"distilled, draft vocab {len(vocab)}"
        rows[main] = _measure(target, draft, tokenizer, prompts, k, max_new, draft_confidence=confidence,
                              draft_vocab=vocab)
    if result["resumed_from_step"]:
        print(f"(resumed an earlier run in {config.output_dir} at step {result['resumed_from_step']})")
    print(f"\ndistilled draft saved to {result['draft_dir']} after {result['steps']} steps")
    extra = {"train_steps": result["steps"], "train_expected_acceptance": result["history"][-1]["acceptance"],
             "draft_dir": result["draft_dir"], "decode_dtype": config.dtype, "data": config.data,
             "target_fp32_tokens_per_s": round(fp32_baseline["tokens_per_s"], 2)}
    summary = _report(rows, main, config, extra)
    (Path(config.output_dir) / "demo_result.json").write_text(json.dumps(summary, indent=2))
    return summary


def _distill(config: DemoConfig, target, tokenizer, dtype) -> dict:
    train_config = TrainConfig(
        target=config.target, keep_layers=config.keep_layers, output_dir=config.output_dir, steps=config.steps,
        batch_size=config.batch_size, seq_len=config.seq_len, lr=config.lr, max_minutes=config.max_minutes,
        seed=config.seed, save_every=max(1, config.steps // 4), data=config.data,
        generate_tokens=config.generate_tokens,
    )
    # Generated while the target is in the fast decoding dtype; the logits it trains on come later, in fp32.
    rows = training_rows(train_config, target, tokenizer)
    target.float()
    result = train(train_config, target=target, tokenizer=tokenizer, data=rows)
    target.to(dtype)
    return result


def run_bench(config: BenchConfig) -> dict:
    dtype = _decode_dtype(config.dtype)
    if not Path(config.draft).is_dir():
        raise FileNotFoundError(f"draft {config.draft!r} is not a directory; train one with `specdistill demo` "
                                "or `specdistill train`, or pass --draft")
    target, tokenizer = load_target(config.target, dtype=dtype)
    draft = AutoModelForCausalLM.from_pretrained(config.draft, dtype=dtype).eval()
    vocab = load_draft_vocab(config.draft, config.draft_vocab_size) if config.draft_vocab_size else None
    prompts = HELDOUT_PROMPTS[: config.num_prompts]
    warm_up(target, draft, tokenizer)
    k, max_new = config.num_draft_tokens, config.max_new_tokens
    name = f"speculative k={k}" + (f", draft vocab {len(vocab)}" if vocab is not None else "")
    rows = {"target alone (HF generate)": measure_target(target, tokenizer, prompts, max_new),
            "target alone (our engine)": _measure(target, None, tokenizer, prompts, 0, max_new),
            name: _measure(target, draft, tokenizer, prompts, k, max_new, config.temperature,
                           draft_confidence=config.draft_confidence, draft_vocab=vocab)}
    return _report(rows, name, config, {"temperature": config.temperature, "draft": config.draft})
