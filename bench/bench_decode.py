"""Decoding speed on the default target: HF `generate` alone, HF assisted generation
and our SpeculativeGenerator (the target alone on our runner, fixed k, cost-aware
"auto", HF's heuristic schedule; the fast path, and the generic HF path once), with
the same draft, the same held-out prompts and the same seeds; greedy and T = 0.7.
With several prompts it also runs them as one batch, HF `generate` and ours.

    python bench/bench_decode.py --quick            # 1 prompt, 48 new tokens: a smoke run
    python bench/bench_decode.py --draft runs/demo/final --dtype bf16

Prints a table, then ONE JSON line. In greedy mode it also checks that our
output equals HF `generate`'s token for token (`greedy_outputs_match`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from specdistill.serve import SpecStats, SpeculativeGenerator

from specdistill.data.prompts import HELDOUT_PROMPTS, chat_prompt_ids
from specdistill.measure import expected_tokens_per_call, predicted_speedup
from specdistill.models import load_draft_vocab, load_model, load_target, prune_draft

DEFAULT_DRAFT = Path("runs/demo/final")
MODES = {"greedy": 0.0, "t0.7": 0.7}


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default="smollm2-135m", help="the embedded default or a HF model directory")
    parser.add_argument("--draft", default=None, help=f"HF draft directory (default {DEFAULT_DRAFT} if it exists, "
                        "else an undistilled draft pruned from the target)")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--num-prompts", type=int, default=len(HELDOUT_PROMPTS))
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--k", type=int, default=5, help="draft length of the fixed-k run")
    parser.add_argument("--modes", default="greedy,t0.7", help="comma-separated: greedy, t0.7")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda")
    parser.add_argument("--draft-vocab-size", type=int, default=8192,
                        help="our rows draft only the N most frequent training tokens, from draft_vocab.json beside "
                        "the draft (0 = the whole vocabulary); one row always uses the whole vocabulary")
    parser.add_argument("--quick", action="store_true", help="1 prompt and 48 new tokens (a smoke run)")
    return parser.parse_args()


def load_models(args):
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    target, tokenizer = load_target(args.target, dtype)
    target = target.to(device)
    draft_path = Path(args.draft) if args.draft else DEFAULT_DRAFT
    if draft_path.is_dir():
        return target, tokenizer, load_model(draft_path, dtype).to(device), str(draft_path)
    if args.draft:
        raise SystemExit(f"--draft {args.draft} is not a directory")
    print(f"WARNING: {DEFAULT_DRAFT} not found; using an UNDISTILLED draft pruned from the target "
          "(layers 0,1,2,-1): acceptance and speed are far below a distilled draft's")
    return target, tokenizer, prune_draft(target, [0, 1, 2, -1]), "pruned[0,1,2,-1] (undistilled)"


def hf_kwargs(tokenizer, temperature):
    eos = tokenizer.eos_token_id
    kwargs = {"do_sample": temperature > 0, "eos_token_id": eos, "pad_token_id": eos}
    if temperature > 0:  # top_k=0/top_p=1 explicitly: the checkpoint's generation config may set others
        kwargs.update(temperature=temperature, top_k=0, top_p=1.0)
    return kwargs


def run_hf(target, tokenizer, prompts, args, temperature, assistant=None) -> dict:
    outputs, new_tokens, seconds = [], 0, 0.0
    for i, ids in enumerate(prompts):
        torch.manual_seed(args.seed + i)
        extra = {"assistant_model": assistant} if assistant is not None else {}
        start = time.perf_counter()
        out = target.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=args.max_new_tokens,
                              **hf_kwargs(tokenizer, temperature), **extra)
        seconds += time.perf_counter() - start
        outputs.append(out[0, ids.shape[1]:].tolist())
        new_tokens += out.shape[1] - ids.shape[1]
    return {"tokens_per_s": new_tokens / seconds, "new_tokens": new_tokens, "seconds": seconds, "outputs": outputs}


def run_ours(generator, tokenizer, prompts, args, temperature) -> dict:
    stats, outputs, seconds = SpecStats(), [], 0.0
    for i, ids in enumerate(prompts):
        start = time.perf_counter()
        out = generator.generate(ids, max_new_tokens=args.max_new_tokens, temperature=temperature,
                                 eos_token_id=tokenizer.eos_token_id, seed=args.seed + i)
        seconds += time.perf_counter() - start
        stats = stats.merge(out.stats)
        outputs.append(out.sequences[0, ids.shape[1]:].tolist())
    return _ours_result(stats, outputs, seconds)


def run_ours_batch(generator, tokenizer, prompts, args, temperature) -> dict:
    """All prompts in one batch: tokens/s is the batch's throughput."""
    start = time.perf_counter()
    outs = generator.generate_batch(prompts, max_new_tokens=args.max_new_tokens, temperature=temperature,
                                    eos_token_id=tokenizer.eos_token_id, seed=args.seed)
    seconds = time.perf_counter() - start
    stats = SpecStats()
    for out in outs:
        stats = stats.merge(out.stats)
    # Each row carries its share of the shared forwards, so the merged calls are the batch's own.
    outputs = [out.sequences[0, ids.shape[1]:].tolist() for ids, out in zip(prompts, outs)]
    return _ours_result(stats, outputs, seconds)


def run_hf_batch(target, tokenizer, prompts, args, temperature) -> dict:
    """HF generate on all prompts at once, left-padded (its batched mode)."""
    width = max(ids.shape[1] for ids in prompts)
    pad = tokenizer.eos_token_id
    ids = torch.stack([torch.cat([torch.full((width - p.shape[1],), pad), p[0].cpu()]) for p in prompts])
    mask = torch.stack([torch.cat([torch.zeros(width - p.shape[1]), torch.ones(p.shape[1])]) for p in prompts])
    torch.manual_seed(args.seed)
    start = time.perf_counter()
    out = target.generate(ids.to(target.device), attention_mask=mask.long().to(target.device),
                          max_new_tokens=args.max_new_tokens, **hf_kwargs(tokenizer, temperature))
    seconds = time.perf_counter() - start
    outputs = [_until_eos(row[width:].tolist(), pad) for row in out]
    return {"tokens_per_s": sum(map(len, outputs)) / seconds, "new_tokens": sum(map(len, outputs)),
            "seconds": seconds, "outputs": outputs}


def _until_eos(tokens: list[int], eos: int) -> list[int]:
    return tokens[: tokens.index(eos) + 1] if eos in tokens else tokens


def _ours_result(stats, outputs, seconds) -> dict:
    return {"tokens_per_s": stats.new_tokens / seconds, "new_tokens": stats.new_tokens, "seconds": seconds,
            "alpha": stats.alpha, "tau": stats.tau, "mean_k": stats.proposed / max(stats.steps, 1),
            "per_position_acceptance": [round(a, 3) for a in stats.per_position_acceptance()],
            "draft_step_s": stats.draft_seconds / max(stats.draft_calls, 1),
            "verify_step_s": stats.target_seconds / max(stats.target_calls, 1), "outputs": outputs}


def warm_up(target, draft, tokenizer, prompt):
    """One short run of each path, so one-time costs stay out of the timings."""
    kwargs = hf_kwargs(tokenizer, 0.0)
    target.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=4, **kwargs)
    target.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=4, assistant_model=draft, **kwargs)
    for fast_path in (True, False):
        SpeculativeGenerator(target, draft, num_draft_tokens=2, fast_path=fast_path).generate(prompt, max_new_tokens=4)


def our_runs(k: int) -> list[tuple]:
    """(name, draft length policy, draft confidence, fast path, use the draft vocabulary).
    Confidence 0.4 stops drafting below 0.4 draft probability, as HF assisted generation
    does by default; k = 0 is the target alone on our runner (what the fast path gains
    without any draft)."""
    return [("ours_target_only", 0, 0.0, "auto", False), (f"ours_k{k}", k, 0.0, "auto", True),
            (f"ours_k{k}_conf0.4", k, 0.4, "auto", True), (f"ours_k{k}_conf0.4_fullvocab", k, 0.4, "auto", False),
            ("ours_auto", "auto", 0.0, "auto", True), ("ours_auto_conf0.4", "auto", 0.4, "auto", True),
            ("ours_hf_heuristic", "heuristic", 0.0, "auto", True),
            ("ours_auto_conf0.4_hfpath", "auto", 0.4, False, False)]


def bench_mode(target, draft, tokenizer, prompts, args, temperature, vocab=None) -> dict:
    results = {"target_hf": run_hf(target, tokenizer, prompts, args, temperature),
               "hf_assisted": run_hf(target, tokenizer, prompts, args, temperature, assistant=draft)}
    for name, policy, confidence, fast_path, use_vocab in our_runs(args.k):
        generator = SpeculativeGenerator(target, draft if policy != 0 else None, num_draft_tokens=policy,
                                         tokenizer=tokenizer, draft_confidence=confidence, fast_path=fast_path,
                                         draft_vocab=vocab if use_vocab else None)
        results[name] = run_ours(generator, tokenizer, prompts, args, temperature)
    if len(prompts) > 1:
        results["target_hf_batch"] = run_hf_batch(target, tokenizer, prompts, args, temperature)
        generator = SpeculativeGenerator(target, draft, num_draft_tokens="auto", tokenizer=tokenizer,
                                         draft_confidence=0.4, draft_vocab=vocab)
        results["ours_batch_auto_conf0.4"] = run_ours_batch(generator, tokenizer, prompts, args, temperature)
    for name, result in results.items():
        print(f"  {name}: {result['tokens_per_s']:.2f} tok/s", file=sys.stderr, flush=True)
    base, assisted = results["target_hf"], results["hf_assisted"]
    for name, result in results.items():
        result["speedup"] = result["tokens_per_s"] / base["tokens_per_s"]
        if name.startswith("ours"):
            result["vs_hf_assisted"] = result["tokens_per_s"] / assisted["tokens_per_s"]
    # The speedup formula's prediction, on our own runner: c = one draft step over one plain
    # target step, both measured; measured = fixed k over the target alone.
    alone, fixed = results["ours_target_only"], results[f"ours_k{args.k}"]
    fixed["cost_ratio"] = fixed["draft_step_s"] * alone["tokens_per_s"]
    fixed["predicted_speedup_over_target_only"] = predicted_speedup(fixed["alpha"], args.k, fixed["cost_ratio"])
    fixed["measured_over_predicted"] = (fixed["tokens_per_s"] / alone["tokens_per_s"]
                                        / fixed["predicted_speedup_over_target_only"])
    # The formula prices a (k+1)-token verification at one target step; on a CPU it costs more.
    fixed["verify_cost_ratio"] = fixed["verify_step_s"] / alone["verify_step_s"]
    fixed["predicted_with_verify_cost"] = (expected_tokens_per_call(fixed["alpha"], args.k)
                                           / (args.k * fixed["cost_ratio"] + fixed["verify_cost_ratio"]))
    if temperature == 0:
        for name, result in results.items():
            if name.startswith("ours"):
                result["greedy_outputs_match"] = sum(a == b for a, b in zip(result["outputs"], base["outputs"]))
    return results


def print_table(all_results, num_prompts):
    print(f"\n{'mode':<7} {'method':<28} {'tok/s':>7} {'speedup':>8} {'vs asst':>8} {'alpha':>6} {'tau':>5} "
          f"{'mean k':>6} {'greedy==HF':>10}")
    for mode, results in all_results.items():
        for name, r in results.items():
            alpha = f"{r['alpha']:.3f}" if "alpha" in r else "-"
            tau = f"{r['tau']:.2f}" if "tau" in r else "-"
            mean_k = f"{r['mean_k']:.1f}" if "mean_k" in r else "-"
            match = f"{r['greedy_outputs_match']}/{num_prompts}" if "greedy_outputs_match" in r else "-"
            vs_assisted = f"{r['vs_hf_assisted']:.2f}x" if "vs_hf_assisted" in r else "-"
            print(f"{mode:<7} {name:<28} {r['tokens_per_s']:>7.1f} {r['speedup']:>7.2f}x {vs_assisted:>8} {alpha:>6} "
                  f"{tau:>5} {mean_k:>6} {match:>10}")


def main():
    args = parse_args()
    if args.quick:
        args.num_prompts, args.max_new_tokens = 1, min(args.max_new_tokens, 48)
    torch.manual_seed(args.seed)
    target, tokenizer, draft, draft_name = load_models(args)
    vocab = load_draft_vocab(draft_name, args.draft_vocab_size) if args.draft_vocab_size and Path(
        draft_name).is_dir() else None
    if vocab is not None:
        print(f"draft vocabulary: the {len(vocab)} most frequent training tokens ({draft_name}/draft_vocab.json)",
              file=sys.stderr)
    prompts = [chat_prompt_ids(tokenizer, p).to(target.device) for p in HELDOUT_PROMPTS[: args.num_prompts]]
    warm_up(target, draft, tokenizer, prompts[0])
    all_results = {}
    for mode in args.modes.split(","):
        print(f"mode {mode}", file=sys.stderr, flush=True)
        all_results[mode] = bench_mode(target, draft, tokenizer, prompts, args, MODES[mode], vocab)
    print_table(all_results, len(prompts))
    summary = {mode: {name: {key: (round(v, 4) if isinstance(v, float) else v) for key, v in r.items()
                             if key != "outputs"} for name, r in results.items()}
               for mode, results in all_results.items()}
    print(json.dumps({"bench": "decode", "target": args.target, "draft": draft_name, "dtype": args.dtype,
                      "device": str(target.device),
                      "draft_vocab": None if vocab is None else len(vocab), "max_new_tokens": args.max_new_tokens,
                      "num_prompts": len(prompts), "k": args.k,
                      "threads": torch.get_num_threads(), "results": summary}))


if __name__ == "__main__":
    main()
