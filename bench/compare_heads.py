"""Compare draft heads by what depends on the head alone: τ of a fixed chain, per task, greedy.

Served τ (``--num-draft-tokens auto``) follows what the cost-aware policy chose to draft, and tokens/s
follows the machine's speed that minute; the τ of a fixed chain of k, greedy, is a property of the head
and the prompts only (``--tree`` adds τ with the served tree and retrieval branch on every step, what the
policy can draw on). Pick a head here on prompts kept apart from the ones its table is measured on:

    python bench/compare_heads.py --heads default runs/v5/head/final runs/v6/head/final --skip 5

(``--skip 5``: the last five prompts of each task of ``bench/prompts/broad-heldout.jsonl``; the README's
table uses the first five). One JSON line at the end.
"""

from __future__ import annotations

import argparse
import json

import torch

from specdistill.bench import MeasureConfig
from specdistill.data.prompts import by_category, read_conversations
from specdistill.measure import measure_speculative
from specdistill.models import load_target
from specdistill.models.drafts import load_draft


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--heads", nargs="+", required=True, help="drafts to compare (default, or head folders)")
    parser.add_argument("--prompts", default="bench/prompts/broad-heldout.jsonl")
    parser.add_argument("--skip", type=int, default=5, help="prompts of each task to leave out, from the start")
    parser.add_argument("--num-prompts", type=int, default=5, help="prompts of each task to use after those")
    parser.add_argument("--k", type=int, default=4, help="the chain's length")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--tree", action="store_true",
                        help="also τ with the served tree and retrieval branch on every step (no policy)")
    parser.add_argument("--draft-tree", default="auto", help="the tree's shape for --tree: DEPTH,TOP_K,NODES")
    args = parser.parse_args()
    target, tokenizer = load_target(dtype=torch.bfloat16)
    tasks = {task: group[args.skip: args.skip + args.num_prompts]
             for task, group in by_category(read_conversations(args.prompts)).items()}
    if not all(tasks.values()):
        raise SystemExit(f"--skip {args.skip} leaves no prompts for some tasks of {args.prompts}")
    modes = {f"chain of {args.k}": dict(num_draft_tokens=args.k)}
    if args.tree:  # as served (the bench's defaults) but with the tree every step: the τ the policy can draw on
        served = MeasureConfig()
        modes["tree"] = dict(num_draft_tokens=args.k, draft_confidence=served.draft_confidence,
                             draft_tree=args.draft_tree, draft_retrieval=served.draft_retrieval)
    taus = {mode: {} for mode in modes}
    for head in args.heads:
        draft, vocab = load_draft(head, target, dtype=torch.bfloat16)
        for mode, settings in modes.items():
            row = {task: measure_speculative(target, draft, tokenizer, prompts, max_new_tokens=args.max_new_tokens,
                                             draft_vocab=vocab, progress=False, **settings)["tau"]
                   for task, prompts in tasks.items()}
            taus[mode][head] = row | {"mean": sum(row.values()) / len(tasks)}
    columns = [*tasks, "mean"]
    for mode, rows in taus.items():
        print(f"{mode}, greedy, τ per task ({args.num_prompts} prompts each, after the first {args.skip})")
        print(f"{'head':<28}" + "".join(f"{c[:12]:>13}" for c in columns))
        for head, row in rows.items():
            print(f"{head[-28:]:<28}" + "".join(f"{row[c]:>13.2f}" for c in columns))
    rounded = {mode: {h: {c: round(v, 3) for c, v in row.items()} for h, row in rows.items()}
               for mode, rows in taus.items()}
    print(json.dumps({"k": args.k, "skip": args.skip, "num_prompts": args.num_prompts,
                      "tau": rounded[f"chain of {args.k}"]} | ({"tree_tau": rounded["tree"]} if args.tree else {})))


if __name__ == "__main__":
    main()
