"""Sampled requests with a draft tree against a chain: τ and tokens/s at several temperatures.

For each temperature, on the same prompts: HF ``generate`` sampling (the faster of fp32 and bf16,
no top-k / top-p, as our rows), our target alone, and the shipped head (or any head) drafting
for sampled rows

    chain   a chain of k (what sampled rows did before trees could be sampled)
    sample  the tree's siblings drawn without replacement from the head's q
    top     the tree's likeliest siblings

all verified exactly (``specdistill.serve.tree_sampling``). One prompt file per set: the held-out
chat prompts and the first prompts of each category of the broad held-out set.

    python bench/bench_tree_sampling.py [--temperatures 0.7 1.0] [--modes chain sample top]

Prints a table per set and temperature, then ONE JSON line with every row.
"""

from __future__ import annotations

import argparse
import json

import torch
from specdistill.serve.tree_sampling import SAMPLED_TREE, sampled_tree_shape

from specdistill.bench import measure_hf_baseline, measure_row
from specdistill.data.prompts import HELDOUT_PROMPTS, Conversation, by_category, read_conversations
from specdistill.measure import warm_up
from specdistill.models import DEFAULT_TARGET, load_target
from specdistill.models.drafts import load_draft


def prompt_sets(args) -> dict[str, list[Conversation]]:
    broad = by_category(read_conversations(args.broad))
    return {"heldout-chat": [Conversation.of(p) for p in HELDOUT_PROMPTS[: args.chat_prompts]],
            "broad": [c for group in broad.values() for c in group[: args.per_category]]}


def measure_set(target, draft, tokenizer, prompts, temperature: float, args) -> dict:
    rows = measure_hf_baseline(target, tokenizer, prompts, args.max_new_tokens, torch.bfloat16, temperature)
    hf = max(r["tokens_per_s"] for r in rows.values())
    warm_up(target, draft, tokenizer)
    out = {"hf_generate_tokens_per_s": round(hf, 2)}
    alone = measure_row(target, None, tokenizer, prompts, 0, args.max_new_tokens, temperature)
    out["target_alone_tokens_per_s"] = round(alone["tokens_per_s"], 2)
    for mode in args.modes:
        tree = "none" if mode == "chain" else args.draft_tree
        result = measure_row(target, draft, tokenizer, prompts, args.num_draft_tokens, args.max_new_tokens,
                             temperature, draft_tree=tree, draft_retrieval="none",
                             draft_tree_sampling="sample" if mode == "chain" else mode,
                             sampled_tree=args.sampled_tree)
        out[mode] = {"tau": round(result["tau"], 3), "tokens_per_s": round(result["tokens_per_s"], 2),
                     "over_hf": round(result["tokens_per_s"] / hf, 3),
                     "tree_step_share": round(result["tree_step_share"], 3)}
    return out


def print_set(name: str, temperature: float, result: dict) -> None:
    print(f"\n== {name}, T = {temperature}: HF generate {result['hf_generate_tokens_per_s']:.1f} tok/s, "
          f"our target alone {result['target_alone_tokens_per_s']:.1f} tok/s")
    print(f"{'drafted':<10}{'tau':>7}{'tok/s':>9}{'over HF':>9}{'tree steps':>12}")
    for mode, row in result.items():
        if isinstance(row, dict):
            print(f"{mode:<10}{row['tau']:>7.2f}{row['tokens_per_s']:>9.1f}{row['over_hf']:>8.2f}x"
                  f"{row['tree_step_share']:>11.0%}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--draft", default="default")
    parser.add_argument("--broad", default="bench/prompts/broad-heldout.jsonl")
    parser.add_argument("--chat-prompts", type=int, default=12)
    parser.add_argument("--per-category", type=int, default=2, help="prompts per category of the broad set")
    parser.add_argument("--sets", nargs="+", default=["heldout-chat", "broad"])
    parser.add_argument("--temperatures", nargs="+", type=float, default=[0.7, 1.0])
    parser.add_argument("--modes", nargs="+", default=["chain", "sample", "top"])
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--num-draft-tokens", default="4", help="the chain's k (an int), or auto")
    parser.add_argument("--draft-tree", default="auto")
    parser.add_argument("--sampled-tree", default=SAMPLED_TREE, help="a sampled row's tree DEPTH,TOP_K,NODES, or auto")
    args = parser.parse_args()
    args.num_draft_tokens = args.num_draft_tokens if args.num_draft_tokens == "auto" else int(args.num_draft_tokens)
    target, tokenizer = load_target(DEFAULT_TARGET, torch.bfloat16)
    draft, _ = load_draft(args.draft, target, torch.bfloat16)
    sets = prompt_sets(args)
    results = {}
    for name in args.sets:
        for temperature in args.temperatures:
            result = measure_set(target, draft, tokenizer, sets[name], temperature, args)
            print_set(name, temperature, result)
            results[f"{name}@T{temperature}"] = result
    sampled_tree = str(sampled_tree_shape(args.sampled_tree, next(target.parameters())))
    print(json.dumps({"draft": args.draft, "max_new_tokens": args.max_new_tokens, "sampled_tree": sampled_tree,
                      "num_draft_tokens": args.num_draft_tokens, "prompts": {n: len(sets[n]) for n in args.sets},
                      "results": results}))


if __name__ == "__main__":
    main()
