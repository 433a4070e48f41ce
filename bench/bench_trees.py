"""Draft trees against the chain, for the shipped head: τ and tokens/s of each, interleaved.

Every configuration decodes the same held-out chat prompts (greedy, bf16, 64 new tokens) in
one process, round after round, so a slow stretch of a shared machine hits them all alike.
Each round also times HF ``generate`` (bf16) and the target alone on our engine.

    python bench/bench_trees.py [--rounds 2] [--num-prompts 12] [--configs auto 5,3,10 4,3,8 ...]
    python bench/bench_trees.py --batch-sizes 1,4,8,16 --configs auto 5,3,10   # under load

With ``--batch-sizes``, each configuration decodes the prompts (at least 2 x B of them, cycled)
with continuous batching of up to B rows (``generate_batch``), as the server does at
concurrency B; each round times the target alone on our engine the same way (no HF row).

A config is ``auto`` (the cost-aware chain with the draft-confidence stop at 0.4, as served),
``kN`` (a chain of N drafts, no stop) or a tree ``DEPTH,TOP_K,NODES``. Prints a line per run,
then ONE JSON line with every run and each config's mean.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import statistics
import time

import torch
from specdistill.serve import SpecStats, SpeculativeGenerator

from specdistill.data.prompts import HELDOUT_PROMPTS, chat_prompt_ids
from specdistill.measure import measure_speculative, measure_target, warm_up
from specdistill.models import load_target
from specdistill.models.drafts import load_draft

CONFIGS = ("auto", "k6", "5,3,10", "4,3,8", "6,3,10", "5,2,8", "6,4,16")


def options(config: str) -> dict:
    if config == "auto":
        return {"num_draft_tokens": "auto", "draft_confidence": 0.4}
    if config.startswith("k"):
        return {"num_draft_tokens": int(config[1:])}
    return {"draft_tree": config}


def decode(target, head, tokenizer, prompts, config: str, max_new_tokens: int) -> dict:
    result = measure_speculative(target, head, tokenizer, prompts, max_new_tokens=max_new_tokens, progress=False,
                                 **options(config))
    return {"tokens_per_s": round(result["tokens_per_s"], 2), "tau": round(result["tau"], 3)}


def decode_batched(target, head, tokenizer, config: str, batch: int, count: int, max_new_tokens: int) -> dict:
    """``count`` held-out prompts (cycled) through one engine of up to ``batch`` rows."""
    prompts = [chat_prompt_ids(tokenizer, p) for p in itertools.islice(itertools.cycle(HELDOUT_PROMPTS), count)]
    alone = config == "alone"
    generator = SpeculativeGenerator(target, None if alone else head, **({} if alone else options(config)))
    began = time.perf_counter()
    outputs = generator.generate_batch(prompts, max_new_tokens, eos_token_id=tokenizer.eos_token_id,
                                       max_batch_size=batch)
    seconds = time.perf_counter() - began
    stats = functools.reduce(SpecStats.merge, (o.stats for o in outputs))  # τ as the engine defines it
    return {"tokens_per_s": round(stats.new_tokens / seconds, 2), "tau": round(stats.tau, 3)}


def batched_rounds(target, head, tokenizer, args) -> None:
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    runs = {(b, c): [] for b in sizes for c in ["alone", *args.configs]}
    for round_index, batch in itertools.product(range(args.rounds), sizes):
        count = max(args.num_prompts, 2 * batch)
        for config in ["alone", *args.configs]:
            runs[batch, config].append(decode_batched(target, head, tokenizer, config, batch, count,
                                                      args.max_new_tokens))
            run, alone = runs[batch, config][-1], runs[batch, "alone"][-1]
            print(f"round {round_index}: batch {batch:>2} {config:>8}  tau {run['tau']:.2f}  "
                  f"{run['tokens_per_s']:6.1f} tok/s  {run['tokens_per_s'] / alone['tokens_per_s']:.2f}x the target "
                  f"alone", flush=True)
    means = {f"{b} {c}": round(statistics.mean(r["tokens_per_s"] for r in rs), 2) for (b, c), rs in runs.items()}
    over = {f"{b} {c}": round(means[f"{b} {c}"] / means[f"{b} alone"], 3) for b, c in runs}
    print(json.dumps({"batch_sizes": sizes, "rounds": args.rounds, "mean_tokens_per_s": means,
                      "mean_speedup_vs_target_alone": over,
                      "runs": {f"{b} {c}": rs for (b, c), rs in runs.items()}}))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--num-prompts", type=int, default=12)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS))
    parser.add_argument("--batch-sizes", default=None, help="e.g. 1,4,8,16: decode under load (see above)")
    args = parser.parse_args()
    target, tokenizer = load_target()
    target.to(torch.bfloat16).eval()
    head, _ = load_draft("default", target, torch.bfloat16)
    warm_up(target, head, tokenizer)
    if args.batch_sizes:
        return batched_rounds(target, head, tokenizer, args)
    prompts = HELDOUT_PROMPTS[: args.num_prompts]
    runs = {name: [] for name in ["hf generate", "alone", *args.configs]}
    for round_index in range(args.rounds):
        hf = measure_target(target, tokenizer, prompts, args.max_new_tokens)["tokens_per_s"]
        runs["hf generate"].append({"tokens_per_s": round(hf, 2)})
        alone = measure_speculative(target, None, tokenizer, prompts, num_draft_tokens=0,
                                    max_new_tokens=args.max_new_tokens, progress=False)
        runs["alone"].append({"tokens_per_s": round(alone["tokens_per_s"], 2), "tau": 1.0})
        for config in args.configs:
            runs[config].append(decode(target, head, tokenizer, prompts, config, args.max_new_tokens))
            run = runs[config][-1]
            print(f"round {round_index}: {config:>8}  tau {run['tau']:.2f}  {run['tokens_per_s']:6.1f} tok/s  "
                  f"{run['tokens_per_s'] / hf:.2f}x HF generate ({hf:.1f})", flush=True)
    means = {name: round(statistics.mean(r["tokens_per_s"] for r in rs), 2) for name, rs in runs.items()}
    print(json.dumps({"num_prompts": len(prompts), "rounds": args.rounds, "mean_tokens_per_s": means,
                      "mean_speedup_vs_hf_generate": {name: round(m / means["hf generate"], 3)
                                                      for name, m in means.items()}, "runs": runs}))


if __name__ == "__main__":
    main()
