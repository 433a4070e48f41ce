"""Where a decoding step's time goes, by drafting method: the draft's calls, the target's verification
and the rest (sampling, acceptance, bookkeeping), per step, for the shipped head on held-out chat
prompts, a fixed k = 4 (the tree on every step), bf16, 64 new tokens.

    python bench/bench_step_cost.py [--num-prompts 6]

Prints one line per method, then ONE JSON line.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from specdistill.serve import SpeculativeGenerator
from specdistill.serve.tree_sampling import SAMPLED_TREE

from specdistill.data.prompts import HELDOUT_PROMPTS, chat_prompt_ids
from specdistill.models import DEFAULT_TARGET, load_target
from specdistill.models.drafts import load_draft

# (name, greedy tree, sampled tree, temperature); None = a chain of 4
METHODS = [("chain T0.7", None, None, 0.7), ("tree 5,3,10 T0.7", "5,3,10", "5,3,10", 0.7),
           ("tree 4,2,6 T0.7", "5,3,10", "4,2,6", 0.7), ("tree 5,3,10 greedy", "5,3,10", None, 0.0),
           ("chain greedy", None, None, 0.0)]


def measure(target, draft, prompts, tree, sampled, temperature: float) -> dict:
    gen = SpeculativeGenerator(target, draft, num_draft_tokens=4, draft_tree=tree, sampled_tree=sampled or SAMPLED_TREE)
    gen.generate(prompts[0], max_new_tokens=8, temperature=temperature, seed=0)  # warm-up
    steps = new = drafting = verifying = total = 0.0
    for seed, ids in enumerate(prompts):
        began = time.perf_counter()
        out = gen.generate(ids, max_new_tokens=64, temperature=temperature, seed=seed)
        total += time.perf_counter() - began - out.stats.prefill_seconds
        steps, new = steps + out.stats.steps, new + out.stats.new_tokens
        drafting, verifying = drafting + out.stats.draft_seconds, verifying + out.stats.target_seconds
    ms = 1000 / steps
    return {"tau": round(new / steps, 3), "step_ms": round(total * ms, 1), "draft_ms": round(drafting * ms, 1),
            "verify_ms": round(verifying * ms, 1), "rest_ms": round((total - drafting - verifying) * ms, 1),
            "decode_tokens_per_s": round(new / total, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num-prompts", type=int, default=6)
    args = parser.parse_args()
    target, tokenizer = load_target(DEFAULT_TARGET, torch.bfloat16)
    draft, _ = load_draft("default", target, torch.bfloat16)
    prompts = [chat_prompt_ids(tokenizer, p) for p in HELDOUT_PROMPTS[: args.num_prompts]]
    results = {}
    for name, tree, sampled, temperature in METHODS:
        r = results[name] = measure(target, draft, prompts, tree, sampled, temperature)
        print(f"{name:<20} tau {r['tau']:.2f}  step {r['step_ms']:.1f} ms = draft {r['draft_ms']:.1f} + verify "
              f"{r['verify_ms']:.1f} + rest {r['rest_ms']:.1f}; {r['decode_tokens_per_s']:.1f} tok/s", flush=True)
    print(json.dumps({"num_prompts": args.num_prompts, "results": results}))


if __name__ == "__main__":
    main()
