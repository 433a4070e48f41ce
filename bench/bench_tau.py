"""τ per category of a prompt file, for the shipped head (or any draft), under several retrieval
settings: the acceptance side of the broad-traffic work, without the baselines.

τ (tokens per target call) does not depend on the machine, so this skips the HF and
target-alone timings that ``specdistill bench --by-category`` adds, and runs in a third of the
time. The draft drafts on every step (a fixed k, so the tree is always taken), greedy, bf16.

    python bench/bench_tau.py --retrieval none ngram:8 [--num-prompts 5] [--prompts FILE]

Prints a line per category and setting, then ONE JSON line with every setting's τ by category
and its mean.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from specdistill.bench import measure_row
from specdistill.data.prompts import by_category, read_conversations
from specdistill.models import DEFAULT_TARGET, load_target
from specdistill.models.drafts import load_draft


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--draft", default="default")
    parser.add_argument("--prompts", default="bench/prompts/broad-heldout.jsonl")
    parser.add_argument("--num-prompts", type=int, default=5, help="the first N of each category")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--num-draft-tokens", type=int, default=4, help="a chain's k (heads draft the tree)")
    parser.add_argument("--draft-tree", default="auto")
    parser.add_argument("--retrieval", nargs="+", default=["none", "ngram:8"])
    args = parser.parse_args()
    target, tokenizer = load_target(DEFAULT_TARGET, torch.bfloat16)
    draft, vocab = load_draft(args.draft, target, torch.bfloat16)
    groups = by_category(read_conversations(args.prompts))
    settings = {}
    for retrieval in args.retrieval:
        taus = {}
        for category, conversations in groups.items():
            began = time.perf_counter()
            result = measure_row(target, draft, tokenizer, conversations[: args.num_prompts], args.num_draft_tokens,
                                 args.max_new_tokens, draft_vocab=vocab, draft_tree=args.draft_tree,
                                 draft_retrieval=retrieval)
            taus[category] = round(result["tau"], 3)
            print(f"{retrieval:<16}{category:<16}tau {taus[category]:.2f}  ({time.perf_counter() - began:.0f} s)",
                  flush=True)
        settings[retrieval] = {"mean_tau": round(sum(taus.values()) / len(taus), 3), "by_category": taus}
    print(json.dumps({"draft": args.draft, "prompts": args.prompts, "num_prompts": args.num_prompts,
                      "max_new_tokens": args.max_new_tokens, "draft_tree": args.draft_tree, "settings": settings}))


if __name__ == "__main__":
    main()
