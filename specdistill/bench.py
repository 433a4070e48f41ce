"""``specdistill bench``: measure a draft against its target on held-out prompts, against HF
``generate`` (the faster of fp32 and bf16) and our engine with no draft, in one table ending with
one JSON line. The rows take each prompt in turns, so a host whose speed drifts over minutes moves
them all alike and the ratios hold. ``MeasureConfig`` and the report are shared with ``specdistill demo``.
"""

from __future__ import annotations

import copy
import functools
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from specdistill.data.prompts import HELDOUT_PROMPTS, Conversation, by_category, read_conversations
from specdistill.measure import (
    measure_speculative,
    measure_target,
    predicted_speedup,
    speculative_summary,
    target_summary,
    warm_up,
    warm_up_generate,
)
from specdistill.models import DEFAULT_TARGET, load_target
from specdistill.models.drafts import DEFAULT_DRAFT, load_draft, resolve_draft
from specdistill.models.eagle3 import Eagle3Head
from specdistill.options import nested, option
from specdistill.serve import SpecStats, SpeculativeGenerator
from specdistill.serve.model_free import RetrievalBranch
from specdistill.serve.tree import TreeShape
from specdistill.serve.tree_sampling import SAMPLED_TREE, check_sampled_tree, check_tree_sampling
from specdistill.training.model_card import update_model_card

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


@dataclass
class MeasureConfig:
    """How a draft is measured against its target (part of the demo's and bench's flags)."""

    num_draft_tokens: str = option("4", "drafts per step: an int k, or auto (the engine picks k from measured "
                                        "acceptance and step costs)")
    max_new_tokens: int = option(64, "tokens generated per prompt")
    prompts: str = option("", "a prompt file: JSONL with a 'prompt', chat 'messages' or multi-turn 'turns' (each "
                              "asked after the model's own answer) and an optional 'category' per line, or text "
                              "with one prompt per line; default: the project's held-out chat prompts")
    num_prompts: int = option(12, "prompts used (the first N; per category with --by-category)")
    decode_temperature: float = option(0.0, "sampling temperature while decoding (0 = greedy)")
    dtype: str = option("bf16", "fp32 or bf16, for both models while decoding (bf16 verifies k tokens at ~1 "
                                "step's cost)")
    draft_confidence: float = option(0.4, "stop drafting below this draft probability (HF assisted's default)")
    draft_vocab_size: int = option(8192, "draft only the N most frequent training tokens (0 = all; needs "
                                         "draft_vocab.json)")
    draft_tree: str = option("auto", "an EAGLE-3 head drafts a tree DEPTH,TOP_K,NODES per step instead of a chain "
                                     "of k: auto = 5,8,12 for a head, none = a chain")
    draft_retrieval: str = option("auto", "candidates copied from the prompt and answer join a head's tree: "
                                          "METHOD[:TOKENS][+STORE] (ngram, prompt-lookup; STORE: served = also "
                                          "the outputs served so far where the text has no match, corpus = "
                                          "those and the answers the head trained on), auto = "
                                          "ngram:8+corpus with a tree, none")
    draft_tree_sampling: str = option("sample", "how sampled requests use the tree: sample (siblings drawn "
                                                "without replacement from the head), top (the likeliest "
                                                "siblings), chain (no tree); exact either way")
    sampled_tree: str = option(SAMPLED_TREE, "the size DEPTH,TOP_K,NODES of a sampled request's fixed tree; auto = "
                                           "5,3,10 on a GPU or a CPU with bf16 instructions, else 4,2,6")

    def __post_init__(self):
        decode_dtype(self.dtype)
        check_tree_sampling(self.draft_tree_sampling)
        check_sampled_tree(self.sampled_tree)
        TreeShape.parse(self.draft_tree)  # a bad spec fails before any model loads
        RetrievalBranch.parse(self.draft_retrieval)
        if self.num_draft_tokens != "auto" and not str(self.num_draft_tokens).isdigit():
            raise ValueError(f"num_draft_tokens must be an integer >= 0 or auto, got {self.num_draft_tokens!r}")

    @property
    def k(self) -> int | str:
        """``num_draft_tokens`` as the generator takes it."""
        return "auto" if self.num_draft_tokens == "auto" else int(self.num_draft_tokens)
        if self.num_prompts < 1 or self.max_new_tokens < 1:
            raise ValueError("num_prompts and max_new_tokens must be >= 1")


@dataclass
class BenchConfig:
    """Measure a saved draft against its target."""

    draft: str = option("default", "default (the shipped EAGLE-3 head), a draft directory (causal LM or EAGLE-3 "
                                   "head), or a model-free drafter: prompt-lookup, ngram")
    target: str = option(DEFAULT_TARGET, "the embedded default or a local HF model directory")
    by_category: bool = option(False, "measure each 'category' of the prompt file on its own, then a table of "
                                      "all categories and their mean")
    measure: MeasureConfig = nested(MeasureConfig)


def measure_row(target, draft, tokenizer, prompts, k, max_new_tokens, temperature=0.0, draft_confidence=0.0,
             draft_vocab=None, draft_tree=None, draft_retrieval=None, draft_tree_sampling="sample",
             sampled_tree=SAMPLED_TREE) -> dict:
    tree = TreeShape.parse(draft_tree, head=isinstance(draft, Eagle3Head))
    retrieval = RetrievalBranch.parse(draft_retrieval, tree=tree is not None)
    result = measure_speculative(target, draft, tokenizer, prompts, num_draft_tokens=k,
                                 max_new_tokens=max_new_tokens, temperature=temperature,
                                 draft_confidence=draft_confidence, draft_vocab=draft_vocab, draft_tree=tree,
                                 draft_retrieval=retrieval, draft_tree_sampling=draft_tree_sampling,
                                 sampled_tree=sampled_tree)
    result["draft_tree"] = None if tree is None else str(tree)
    result["draft_retrieval"] = None if retrieval is None else str(retrieval)
    result.pop("stats")
    return result


def decode_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {name!r}")
    return DTYPES[name]


def _row(name: str, result: dict, baseline: float) -> str:
    alpha = f"{result['alpha']:.3f}" if "alpha" in result and result.get("mean_k") else "-"
    tau = f"{result['tau']:.2f}" if "tau" in result and result.get("mean_k") else "-"
    rate = result["tokens_per_s"]
    return f"{name:<34}{alpha:>8}{tau:>8}{rate:>10.2f}{rate / baseline:>9.2f}x"


def measure_hf_baseline(target, tokenizer, prompts, max_new_tokens: int, dtype: torch.dtype,
                        temperature: float = 0.0) -> dict[str, dict]:
    """HF ``generate`` with the target alone in fp32 and in bf16 (on some CPUs plain
    decoding is faster in fp32: a speedup is only honest against the faster of the
    two), greedy or sampling at ``temperature``; the target is left in ``dtype``."""
    rows = {}
    for name in ("fp32", "bf16"):
        target.to(DTYPES[name])
        warm_up(target, None, tokenizer)
        rows[f"target alone (HF generate, {name})"] = measure_target(target, tokenizer, prompts, max_new_tokens,
                                                                     temperature=temperature)
    target.to(dtype)
    return rows


def print_report(rows: dict[str, dict], main: str, measure: MeasureConfig, extra: dict) -> dict:
    """The table (speedups over the faster HF generate row), the prediction for the
    ``main`` row, and one JSON line."""
    hf = {name: r for name, r in rows.items() if name.startswith("target alone (HF generate")}
    baseline_name = max(hf, key=lambda name: hf[name]["tokens_per_s"])
    base = rows[baseline_name]["tokens_per_s"]
    print(f"\n{'':<34}{'alpha':>8}{'tau':>8}{'tok/s':>10}{'speedup':>10}")
    for name, result in rows.items():
        print(_row(name, result, base))
    alone, after = rows["target alone (our engine)"], rows[main]
    # c against the target step of the same engine; with the confidence stop fewer than k
    # drafts are proposed, so predict with the mean k used.
    cost_ratio = after["draft_step_seconds"] * alone["tokens_per_s"]
    # A chain's k + 1 tokens verify in about one target step; a tree's nodes cost more, so a
    # tree's verification is priced as measured (v: its forward over the target's one-token one).
    verify_ratio = after["verify_seconds"] / alone["verify_seconds"] if after.get("draft_tree") else 1.0
    predicted = predicted_speedup(after["alpha"], after["mean_k"], cost_ratio, verify_ratio)
    measured = after["tokens_per_s"] / alone["tokens_per_s"]
    print(f"\nper-position acceptance ({main}): {after['per_position_acceptance']}")
    print(f"cost ratio c = {cost_ratio:.3f}, verification v = {verify_ratio:.2f}, mean k = {after['mean_k']:.2f}; "
          f"over the target alone on our engine: predicted {predicted:.2f}x from alpha, k, c and v, "
          f"measured {measured:.2f}x")
    summary = {
        "alpha": after["alpha"], "tau": after["tau"], "tokens_per_s": round(after["tokens_per_s"], 2),
        "hf_generate_tokens_per_s": round(base, 2), "hf_generate_baseline": baseline_name,
        "speedup_vs_hf_generate": round(after["tokens_per_s"] / base, 3),
        "rows": {name: {key: r[key] for key in ("alpha", "tau", "tokens_per_s", "mean_k") if key in r}
                 | {"speedup": round(r["tokens_per_s"] / base, 3)} for name, r in rows.items()},
        "main_row": main,
        "per_position_acceptance": after["per_position_acceptance"],
        "cost_ratio": round(cost_ratio, 3),
        "verify_ratio": round(verify_ratio, 3),
        "predicted_speedup_over_our_target": round(predicted, 3),
        "measured_speedup_over_our_target": round(measured, 3),
        "num_draft_tokens": measure.num_draft_tokens,
        "draft_tree": after.get("draft_tree"),
        "tree_step_share": round(after.get("tree_step_share", 0.0), 3),
        "draft_tree_sampling": measure.draft_tree_sampling,
        "draft_confidence": measure.draft_confidence,
        "decode_dtype": measure.dtype,
        # Sampled outputs differ from run to run by design: the check is for greedy decoding only.
        "greedy_outputs_equal_target": None if measure.decode_temperature else {
            name: r["outputs"] == rows[baseline_name]["outputs"] for name, r in rows.items() if "outputs" in r},
        **extra,
    }
    print(json.dumps(summary))
    return summary


def measure_prompts(measure: MeasureConfig) -> list[Conversation]:
    if not measure.prompts:
        return [Conversation.of(p) for p in HELDOUT_PROMPTS[: measure.num_prompts]]
    return read_conversations(measure.prompts)[: measure.num_prompts]


def run_bench(config: BenchConfig) -> dict:
    measure = config.measure
    dtype = decode_dtype(measure.dtype)
    where = resolve_draft(config.draft)  # a bad name fails before any model loads
    if config.by_category and not measure.prompts:
        raise ValueError("--by-category needs --prompts FILE whose records have a 'category'")
    groups = {category: conversations[: measure.num_prompts] for category, conversations in
              by_category(read_conversations(measure.prompts)).items()} if config.by_category else \
        {"": measure_prompts(measure)}
    target, tokenizer = load_target(config.target)
    draft, vocab = load_draft(config.draft, target, dtype, measure.draft_vocab_size)
    hf_targets = hf_generate_targets(target, dtype)
    for model in hf_targets.values():
        if model is not target:  # the copy runs HF generate only; the target's own runs warm up below
            warm_up_generate(model, tokenizer)
    warm_up(target, draft, tokenizer)
    summaries = {}
    for category, conversations in groups.items():
        if config.by_category:
            print(f"\n== {category} ==")
        summaries[category] = bench_rows(target, draft, vocab, tokenizer, conversations, config, hf_targets, category)
    summary = summaries[""] if not config.by_category else print_categories(summaries, config)
    if isinstance(where, Path) and config.draft != DEFAULT_DRAFT:  # the shipped draft's card is part of the package
        update_model_card(where, summary | {"source": f"specdistill bench, {summary['num_prompts']} prompts"})
    return summary


def bench_rows(target, draft, vocab, tokenizer, conversations: list[Conversation], config: BenchConfig,
               hf_targets: dict, category: str = "") -> dict:
    """HF ``generate`` (``hf_targets``: the target in fp32 and bf16), our engine alone and the draft on these
    conversations, prompt by prompt in turns (each row takes a prompt, then the next row; the order rotates), so
    that every row sees the same minutes of a host whose speed drifts: the table and its JSON line. Each engine
    row keeps one generator over the prompts, as one server would (what its policy learns carries over)."""
    measure = config.measure
    k, max_new, temperature = measure.k, measure.max_new_tokens, measure.decode_temperature
    tree = TreeShape.parse(measure.draft_tree, head=isinstance(draft, Eagle3Head))
    retrieval = RetrievalBranch.parse(measure.draft_retrieval, tree=tree is not None)
    drafted = SpeculativeGenerator(target, draft, num_draft_tokens=k, draft_confidence=measure.draft_confidence,
                                   draft_vocab=vocab, draft_tree=tree, draft_retrieval=retrieval,
                                   draft_tree_sampling=measure.draft_tree_sampling, sampled_tree=measure.sampled_tree)
    engines = {"alone": SpeculativeGenerator(target, None, num_draft_tokens=0), "draft": drafted}
    hf_rows = {f"target alone (HF generate, {name})": model for name, model in hf_targets.items()}
    runs = {name: [] for name in [*hf_rows, "alone", "draft"]}
    for i, conversation in enumerate(tqdm(conversations, desc=category or "prompts", leave=False)):
        names = list(runs)
        for name in names[i % len(names):] + names[: i % len(names)]:
            if name in hf_rows:
                runs[name].append(measure_target(hf_rows[name], tokenizer, [conversation], max_new, progress=False,
                                                 temperature=temperature))
            else:
                runs[name].append(measure_speculative(target, None, tokenizer, [conversation], max_new_tokens=max_new,
                                                      temperature=temperature, seed=1000 * i, progress=False,
                                                      generator=engines[name]))
    rows = {name: _merged_target_runs(runs[name]) for name in hf_rows}
    rows["target alone (our engine)"] = _merged_engine_runs(runs["alone"])
    result = _merged_engine_runs(runs["draft"]) | {"draft_tree": None if tree is None else str(tree),
                                                   "draft_retrieval": None if retrieval is None else str(retrieval)}
    name = drafted_label(result, k)
    name += f" + {result['draft_retrieval']}" if result["draft_retrieval"] else ""
    name += f", draft vocab {len(vocab)}" if vocab is not None else ""
    rows[name] = result
    extra = {"decode_temperature": measure.decode_temperature, "draft": config.draft,
             "num_prompts": len(conversations), "turns": sum(len(c.turns) for c in conversations),
             "interleaved": "prompt by prompt"}
    return print_report(rows, name, measure, extra | ({"category": category} if category else {}))


def hf_generate_targets(target, dtype: torch.dtype) -> dict:
    """The target in fp32 and in bf16 for HF ``generate``'s rows (on some CPUs plain decoding is faster in
    fp32: a speedup is only honest against the faster of the two): ``target`` itself, moved to the decoding
    ``dtype`` (our engine decodes with it), and a copy in the other."""
    target.to(dtype)
    other = copy.deepcopy(target).to(torch.float32 if dtype == torch.bfloat16 else torch.bfloat16)
    return {name: target if DTYPES[name] == dtype else other for name in ("fp32", "bf16")}


def _merged_target_runs(runs: list[dict]) -> dict:
    return target_summary([out for r in runs for out in r["outputs"]], sum(r["seconds"] for r in runs))


def _merged_engine_runs(runs: list[dict]) -> dict:
    stats = functools.reduce(SpecStats.merge, (r["stats"] for r in runs), SpecStats())
    return speculative_summary(stats) | {"outputs": [out for r in runs for out in r["outputs"]]}


def drafted_label(result: dict, k) -> str:
    """A row's name says what its steps drafted: a tree (with the share of steps, when the policy
    or a sampled request's settings put some on a chain), or a chain of k."""
    share, tree = result.get("tree_step_share", 0.0), result["draft_tree"]
    if not tree or share == 0:
        return f"speculative k={k}"
    return f"speculative tree {tree}" if share == 1 else f"speculative tree {tree} ({share:.0%}) / k={k}"


def print_categories(summaries: dict[str, dict], config: BenchConfig) -> dict:
    """One row per category, their mean, and one JSON line."""
    print(f"\n{'category':<24}{'prompts':>8}{'turns':>7}{'tau':>7}{'tok/s':>9}{'over HF':>9}{'over ours':>10}")
    for category, s in summaries.items():
        print(f"{category:<24}{s['num_prompts']:>8}{s['turns']:>7}{s['tau']:>7.2f}{s['tokens_per_s']:>9.1f}"
              f"{s['speedup_vs_hf_generate']:>8.2f}x{s['measured_speedup_over_our_target']:>9.2f}x")
    mean = {key: round(sum(s[key] for s in summaries.values()) / len(summaries), 3)
            for key in ("tau", "speedup_vs_hf_generate", "measured_speedup_over_our_target")}
    print(f"{'mean':<39}{mean['tau']:>7.2f}{'':>9}{mean['speedup_vs_hf_generate']:>8.2f}x"
          f"{mean['measured_speedup_over_our_target']:>9.2f}x")
    summary = {
        "by_category": {category: {key: s[key] for key in ("tau", "alpha", "tokens_per_s", "speedup_vs_hf_generate",
                                                             "measured_speedup_over_our_target", "num_prompts",
                                                             "turns", "greedy_outputs_equal_target")}
                        for category, s in summaries.items()},
        "mean_tau": mean["tau"], "mean_speedup_vs_hf_generate": mean["speedup_vs_hf_generate"],
        "min_speedup_vs_hf_generate": min(s["speedup_vs_hf_generate"] for s in summaries.values()),
        "mean_speedup_over_our_target": mean["measured_speedup_over_our_target"],
        "draft": config.draft, "num_draft_tokens": config.measure.num_draft_tokens,
        "draft_tree": config.measure.draft_tree, "draft_retrieval": config.measure.draft_retrieval,
        "decode_dtype": config.measure.dtype,
        "decode_temperature": config.measure.decode_temperature,
        "max_new_tokens": config.measure.max_new_tokens,
        "num_prompts": sum(s["num_prompts"] for s in summaries.values()),
    }
    print(json.dumps(summary))
    return summary
