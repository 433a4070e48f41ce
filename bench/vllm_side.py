"""vLLM's half of ``bench/bench_vllm.py``: runs in vLLM's own virtualenv (``make vllm-venv``), never
imports specdistill, and prints ONE JSON line.

    .venv-vllm/bin/python bench/vllm_side.py --model DIR --prompts ids.json [--draft DIR --method eagle3 --k 4]

``--prompts`` is a JSON list of token-id lists (the chat template already applied, so both engines
decode exactly the same inputs). Each concurrency runs the prompts with ``max_num_seqs`` rows at
most: at 1, one request at a time; above, vLLM's own continuous batching over all of them.
"""

from __future__ import annotations

import argparse
import json
import os
import time


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="the target's local directory")
    parser.add_argument("--prompts", required=True, help="a JSON list of token-id lists")
    parser.add_argument("--draft", default="", help="a draft directory (empty: plain decoding)")
    parser.add_argument("--method", default="eagle3", help="eagle3 (a head) or draft_model (a small LM)")
    parser.add_argument("--k", type=int, default=4, help="num_speculative_tokens")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--concurrency", default="1", help="comma-separated max_num_seqs values")
    parser.add_argument("--compiled", action="store_true", help="vLLM's compiled mode (default: enforce_eager)")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--batch-prompts", type=int, default=32, help="requests at concurrency above 1 (cycled)")
    return parser.parse_args()


def spec_counters(llm) -> dict:
    """vLLM's speculative counters so far: drafts, drafted and accepted tokens, accepted per position."""
    found = {"drafts": 0, "draft_tokens": 0, "accepted": 0, "accepted_per_position": []}
    names = {"vllm:spec_decode_num_drafts": "drafts", "vllm:spec_decode_num_draft_tokens": "draft_tokens",
             "vllm:spec_decode_num_accepted_tokens": "accepted"}
    for metric in llm.get_metrics():
        if metric.name in names:
            found[names[metric.name]] += metric.value
        elif metric.name == "vllm:spec_decode_num_accepted_tokens_per_pos":
            found["accepted_per_position"] = list(metric.values)
    return found


def run(llm, prompts, max_tokens: int, concurrency: int) -> dict:
    from vllm import SamplingParams, TokensPrompt

    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=False)
    inputs = [TokensPrompt(prompt_token_ids=ids) for ids in prompts]
    llm.generate(inputs[:1], params, use_tqdm=False)  # warm-up
    before = spec_counters(llm)
    start = time.perf_counter()
    if concurrency == 1:
        outputs = [llm.generate([one], params, use_tqdm=False)[0] for one in inputs]
    else:
        outputs = llm.generate(inputs, params, use_tqdm=False)
    seconds = time.perf_counter() - start
    after = spec_counters(llm)
    tokens = [list(out.outputs[0].token_ids) for out in outputs]
    new = sum(map(len, tokens))
    result = {"concurrency": concurrency, "seconds": round(seconds, 2), "new_tokens": new,
              "tokens_per_s": round(new / seconds, 2), "outputs": tokens}
    drafts = after["drafts"] - before["drafts"]
    if drafts:
        accepted = after["accepted"] - before["accepted"]
        earlier = before["accepted_per_position"] or [0] * len(after["accepted_per_position"])
        per_position = [a - b for a, b in zip(after["accepted_per_position"], earlier)]
        result |= {"tau": round(1 + accepted / drafts, 3), "drafts": drafts, "accepted_per_position": per_position}
    return result


def main():
    args = parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "4")  # GiB: this machine has 24 in all
    from vllm import LLM

    prompts = json.load(open(args.prompts))
    results = []
    for concurrency in map(int, args.concurrency.split(",")):
        config = dict(model=args.model, dtype=args.dtype, max_num_seqs=concurrency, enforce_eager=not args.compiled,
                      disable_log_stats=False, max_model_len=4096,
                      enable_prefix_caching=False)
        if args.draft:
            config["speculative_config"] = {"method": args.method, "model": args.draft,
                                            "num_speculative_tokens": args.k}
        llm = LLM(**config)
        batch = prompts if concurrency == 1 else [prompts[i % len(prompts)] for i in range(args.batch_prompts)]
        results.append(run(llm, batch, args.max_tokens, concurrency))
        del llm
    print(json.dumps({"engine": "vllm", "draft": args.draft or None, "method": args.method if args.draft else None,
                      "k": args.k if args.draft else None, "compiled": args.compiled, "runs": results}))


if __name__ == "__main__":
    main()
