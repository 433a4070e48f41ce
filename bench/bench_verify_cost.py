"""What verifying more tokens in one target pass costs: the default target's forward time for
1..33 new tokens after a prompt (bf16 or fp32, the lean Llama runner), as a ratio to one token.

This is what decides between a chain of k drafts and a tree of many: a draft tree pays only
where verifying its nodes costs little more than one step (GPUs), not where the cost grows
with the tokens (CPUs).

    python bench/bench_verify_cost.py [--context 120] [--repeats 15] [--dtype bf16|fp32]
    python bench/bench_verify_cost.py --compare-packing   # packed bf16 weights against plain ones, interleaved

The JSON line names the CPU's bf16 and AMX support: without them, bf16 matmuls over many tokens
are emulated and a wide verification costs several steps.

Prints one line per width, then ONE JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch
from specdistill.serve import cpu_layer
from specdistill.serve.llama_fast import LlamaRunner

from specdistill.models import load_target
from specdistill.models.loading import native_bf16

WIDTHS = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12, 17, 33)


@torch.no_grad()
def median_ms(runner: LlamaRunner, state, context: int, width: int, repeats: int) -> float:
    ids = torch.randint(0, runner.embed.shape[0], (1, width))
    times = []
    for attempt in range(repeats + 3):  # the first 3 warm up
        started = time.perf_counter()
        runner.forward(state, ids, None)
        if attempt >= 3:
            times.append(time.perf_counter() - started)
        runner.rollback(state, [context])  # back to the prompt: every width verifies at the same place
    return sorted(times)[len(times) // 2] * 1e3


def cpu_flags() -> list[str]:
    """The CPU's bf16 and AMX flags (Linux), which decide what a wide bf16 verification costs."""
    try:
        flags = open("/proc/cpuinfo").read().split("flags")[1].splitlines()[0].split()
    except (OSError, IndexError):
        return []
    return sorted(f for f in flags if "bf16" in f or f.startswith("amx") or f == "avx512f")


def set_packing(on: bool) -> None:
    """The C++ layers' bf16 weights packed for oneDNN (CPUs with bf16 instructions) or plain."""
    os.environ["SPECDISTILL_PACKED_LINEARS"] = "1" if on else "0"
    cpu_layer._packs_bf16.cache_clear()


def compare_packing(runner, state, context: int, repeats: int) -> dict:
    """Each width with packed and with plain weights, in turns (the host's speed drifts within minutes)."""
    times = {on: {width: [] for width in WIDTHS} for on in (True, False)}
    for _ in range(repeats):
        for width in WIDTHS:
            for on in (True, False):
                set_packing(on)
                times[on][width].append(median_ms(runner, state, context, width, 3))
    median = {on: {w: sorted(t)[len(t) // 2] for w, t in by_width.items()} for on, by_width in times.items()}
    for width in WIDTHS:
        print(f"{width:>3} tokens: packed {median[True][width]:6.1f} ms, plain {median[False][width]:6.1f} ms "
              f"({median[True][width] / median[False][width]:.2f}x)", flush=True)
    return {"packed_ms_by_tokens": {w: round(ms, 1) for w, ms in median[True].items()},
            "plain_ms_by_tokens": {w: round(ms, 1) for w, ms in median[False].items()},
            "packed_over_plain": {w: round(median[True][w] / median[False][w], 3) for w in WIDTHS}}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--context", type=int, default=120, help="prompt tokens before the verified ones")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16")
    parser.add_argument("--compare-packing", action="store_true",
                        help="bf16 on a CPU with bf16 instructions: packed against plain weights, in turns")
    args = parser.parse_args()
    torch.manual_seed(0)
    target, _ = load_target()
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    runner = LlamaRunner(target.to(dtype).eval())
    state = runner.start(1, args.context + max(WIDTHS))
    with torch.no_grad():
        runner.forward(state, torch.randint(0, runner.embed.shape[0], (1, args.context)), None)
    if args.compare_packing:
        if args.dtype != "bf16" or not native_bf16("cpu"):
            raise SystemExit("--compare-packing compares bf16 weights on a CPU with bf16 instructions")
        print(json.dumps({"context": args.context, "cpu_flags": cpu_flags(),
                          **compare_packing(runner, state, args.context, args.repeats)}))
        return
    costs = {}
    for width in WIDTHS:
        costs[width] = round(median_ms(runner, state, args.context, width, args.repeats), 1)
        print(f"{width:>3} tokens: {costs[width]:6.1f} ms ({costs[width] / costs[1]:.2f} x one)", flush=True)
    print(json.dumps({"context": args.context, "dtype": args.dtype, "cpu_flags": cpu_flags(),
                      "median_ms_by_tokens": costs,
                      "ratio_to_one_token": {w: round(ms / costs[1], 2) for w, ms in costs.items()}}))


if __name__ == "__main__":
    main()
