"""What each of the CPU's linears and attention dtypes does to a target step: the default target's
forward time for batches of (rows x tokens) after a prompt, through

- fp32: ``F.linear`` (MKL), or weights prepacked for oneDNN (``serve/src/packed_linear.py``);
- bf16: ``F.linear`` alone, our AVX2 kernel (``serve/src/cpu_linear.py``), either with bf16 or fp32
  attention, the kernel up to ``KERNEL_MAX_TOKENS`` tokens and packed fp32 copies above with each
  layer as eager PyTorch ops, and the default: the same with each layer of a step of up to
  ``KERNEL_MAX_TOKENS`` tokens in one C++ call (``serve/src/cpu_layer.py``).

The default of each dtype is what ``LlamaRunner`` picks on this machine; the others are built
from the same runner by swapping its linear and its cache's dtype.

    python bench/bench_linears.py [--context 200] [--repeats 7]

Prints one line per dtype and mode (milliseconds per shape), then ONE JSON line with each default's
ratio to the old path of its dtype (bf16: the eager ops).
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F
from specdistill.serve import cpu_linear
from specdistill.serve.llama_fast import LlamaRunner
from specdistill.serve.packed_linear import packed_linear

from specdistill.models import load_target

SHAPES = ((1, 1), (1, 5), (1, 8), (1, 11), (4, 1), (4, 5), (16, 1), (16, 5))  # (rows, tokens per row)


def _plain(x, weight, bias=None):
    return F.linear(x, getattr(weight, "weight", weight), bias)


def _kernel(x, weight, bias=None):
    return cpu_linear.bf16_linear(x, getattr(weight, "weight", weight), bias)


def _packed_past_one(x, weight, bias=None):  # the default with no kernel: packed from 2 tokens on
    if x.numel() == x.shape[-1]:
        return F.linear(x, weight.weight, bias)
    return packed_linear(x, weight, bias)


@torch.no_grad()
def median_ms(runner: LlamaRunner, rows: int, tokens: int, context: int, repeats: int) -> float:
    state = runner.start(rows, context + tokens)
    runner.forward(state, torch.randint(0, 1000, (rows, context)), [context - 1] * rows)
    ids = torch.randint(0, runner.vocab_size, (rows, tokens))
    keep = [0] * rows if tokens == 1 else None  # a decode step keeps its one position; a verification all
    times = []
    for attempt in range(repeats + 2):  # the first 2 warm up
        runner.rollback(state, [context] * rows)
        started = time.perf_counter()
        runner.forward(state, ids, keep)
        if attempt >= 2:
            times.append(time.perf_counter() - started)
    return sorted(times)[len(times) // 2] * 1e3


def modes(dtype: torch.dtype, runner: LlamaRunner) -> dict:
    """name -> (linear, cache dtype, layers in C++); "default" is the runner as built."""
    default = (runner._linear, runner.cache_dtype, runner._layers_in_cpp)
    if dtype == torch.float32:
        return {"F.linear": (_plain, dtype, False), "default": default}
    found = {"F.linear, bf16 attention": (_plain, dtype, False)}
    if cpu_linear.wanted(runner.embed):
        found["kernel, bf16 attention"] = (_kernel, dtype, False)  # the engine before the packed linears
        found["kernel, fp32 attention"] = (_kernel, torch.float32, False)
    if runner._linear is cpu_linear.bf16_packed_linear:
        found["packed from 2 tokens, fp32 attn"] = (_packed_past_one, torch.float32, False)
    if runner._layers_in_cpp:  # session 15's default: the same linears, each layer as eager ops
        found["eager ops (no C++ layers)"] = (runner._linear, runner.cache_dtype, False)
    found["default"] = default
    return found


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--context", type=int, default=200, help="prompt tokens before the step")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    torch.manual_seed(0)
    results = {}
    print(f"{'dtype':<6}{'mode':<32}" + "".join(f"{f'{r}x{t}':>8}" for r, t in SHAPES) + "   (ms per step)")
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        target, _ = load_target(dtype=dtype)
        runner = LlamaRunner(target.eval())
        results[name] = {}
        for mode, (linear, cache_dtype, in_cpp) in modes(dtype, runner).items():
            runner._linear, runner.cache_dtype, runner._layers_in_cpp = linear, cache_dtype, in_cpp
            times = [round(median_ms(runner, r, t, args.context, args.repeats), 1) for r, t in SHAPES]
            results[name][mode] = dict(zip((f"{r}x{t}" for r, t in SHAPES), times))
            print(f"{name:<6}{mode:<32}" + "".join(f"{ms:>8.1f}" for ms in times), flush=True)
    old = {"fp32": "F.linear", "bf16": next(m for m in ("eager ops (no C++ layers)", "kernel, bf16 attention",
                                                        "F.linear, bf16 attention") if m in results["bf16"])}
    speedup = {name: {shape: round(results[name][old[name]][shape] / ms, 2) for shape, ms in
                      results[name]["default"].items()} for name in results}
    print(json.dumps({"context": args.context, "kernel_max_tokens": cpu_linear.KERNEL_MAX_TOKENS,
                      "ms": results, "default_speedup_over": old, "default_speedup": speedup}))


if __name__ == "__main__":
    main()
