"""Our engine against vLLM's CPU build on the same prompts and settings: plain decoding and our head
(vLLM: a chain of k, its ``eagle3`` method; ours: the same chain, and the tree with its retrieval branch),
one request at a time and at higher concurrency, tokens/s and τ side by side.

    make vllm-venv                                   # once: vLLM's CPU build in .venv-vllm (not part of make test)
    python bench/bench_vllm.py                       # 12 held-out chat prompts, 64 tokens, greedy, bf16
    python bench/bench_vllm.py --concurrency 1,4,16 --draft default --k 4 --compiled --dtype float32
    python bench/bench_vllm.py --lm-draft DIR        # also a causal-LM draft (vLLM's draft_model method)
    python bench/bench_vllm.py --concurrency 1,4,16 --compiled --dtype float32 --ours-dtypes bfloat16,float32
                                                     # each engine at its best dtype on an AVX2 CPU, in one run

vLLM runs in its own virtualenv (``bench/vllm_side.py``, one process per configuration, so the two
never share a process); both engines decode the same token ids (the chat template applied here).
Concurrency 1 runs the held-out prompts one at a time; higher concurrency runs ``--batch-prompts``
requests (the prompts cycled) through each engine's continuous batching. vLLM gets its documented CPU
setup: OpenMP threads on every core (its default reserves one of our two), Intel OpenMP and tcmalloc
preloaded where found, prefix caching off (cycled prompts must not be free). Greedy outputs are
compared token for token. Our rows run ``--rounds`` times in turns (this host's speed moves by 1.5x within
minutes): each gives its median tokens/s and "vs plain", the median over rounds of its ratio to our plain
decoding in the same round (τ and outputs from the first round); vLLM's run once each, after ours.
Prints a table, then ONE JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from specdistill.serve import SpeculativeGenerator

from specdistill.data.prompts import HELDOUT_PROMPTS, chat_ids
from specdistill.models import load_target
from specdistill.models.drafts import load_draft, resolve_draft
from specdistill.models.loading import resolve_model_dir

ROOT = Path(__file__).resolve().parents[1]


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default="smollm2-135m")
    parser.add_argument("--draft", default="default", help="an EAGLE-3 head directory, or default (the shipped one)")
    parser.add_argument("--lm-draft", default="", help="also a causal-LM draft directory (vLLM: method draft_model)")
    parser.add_argument("--k", type=int, default=4, help="the chain's length, both engines")
    parser.add_argument("--num-prompts", type=int, default=12)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--concurrency", default="1,4,16")
    parser.add_argument("--vllm-python", default=str(ROOT / ".venv-vllm" / "bin" / "python"))
    parser.add_argument("--batch-prompts", type=int, default=32, help="requests at concurrency above 1")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"], help="both engines")
    parser.add_argument("--ours-dtypes", default="", help="ours in these dtypes instead (comma-separated), e.g. "
                        "bfloat16,float32: each engine at its best dtype in one run")
    parser.add_argument("--compiled", action="store_true", help="also vLLM's compiled mode (slow to start)")
    parser.add_argument("--ours-only", action="store_true", help="skip vLLM (a quick look at our side)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="our rows run in turns this many times; each reports the median tokens/s, and the "
                             "median of its ratios to plain decoding in the same round (vs plain)")
    return parser.parse_args()


def ours(target, head, prompts: list[list[int]], max_tokens: int, concurrency: int, **settings) -> dict:
    """Our engine on the prompts, ``concurrency`` rows at most (continuous batching above 1)."""
    generator = SpeculativeGenerator(target, head, **settings)
    inputs = [torch.tensor(ids) for ids in prompts]
    generator.generate(inputs[0], 8, eos_token_id=None)  # warm-up (and the CPU kernel's build)
    start = time.perf_counter()
    if concurrency == 1:
        outs = [generator.generate(ids, max_tokens) for ids in inputs]
    else:
        outs = generator.generate_batch(inputs, max_tokens, max_batch_size=concurrency)
    seconds = time.perf_counter() - start
    tokens = [out.sequences[0, len(ids):].tolist() for out, ids in zip(outs, prompts)]
    steps = sum(out.stats.steps for out in outs)
    new = sum(map(len, tokens))
    result = {"concurrency": concurrency, "seconds": round(seconds, 2), "new_tokens": new,
              "tokens_per_s": round(new / seconds, 2), "outputs": tokens}
    if head is not None and steps:
        result["tau"] = round(new / steps, 3)
    return result


def vllm_environment(vllm_python: str) -> dict:
    """vLLM's documented CPU setup: OpenMP threads bound to every core (on 2 cores its default binds
    one and reserves the other), Intel OpenMP and tcmalloc preloaded when they are installed."""
    preload = [path for path in (Path(vllm_python).parents[1] / "lib" / "libiomp5.so",
                                 Path("/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4")) if path.exists()]
    return os.environ | {"VLLM_CPU_OMP_THREADS_BIND": f"0-{os.cpu_count() - 1}", "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
                         "LD_PRELOAD": ":".join(map(str, preload))}


def vllm(args, prompts_file: str, target_dir: Path, draft: str = "", compiled: bool = False,
         method: str = "eagle3") -> dict:
    command = [args.vllm_python, str(ROOT / "bench" / "vllm_side.py"), "--model", str(target_dir), "--prompts",
               prompts_file, "--max-tokens", str(args.max_tokens), "--concurrency", args.concurrency,
               "--dtype", args.dtype, "--batch-prompts", str(args.batch_prompts)]
    if draft:
        command += ["--draft", draft, "--method", method, "--k", str(args.k)]
    if compiled:
        command.append("--compiled")
    done = subprocess.run(command, capture_output=True, text=True, env=vllm_environment(args.vllm_python))
    if done.returncode != 0:  # one configuration failing must not lose the others' half hour
        print(f"vLLM failed, its rows are left out ({' '.join(command)}):\n{done.stderr[-3000:]}", file=sys.stderr)
        return {"runs": [], "failed": " ".join(command[2:])}
    return json.loads(done.stdout.strip().splitlines()[-1])


def requests_at(prompts: list, concurrency: int, batch_prompts: int) -> list:
    """One at a time: the prompts as they are; above: ``batch_prompts`` requests, the prompts cycled."""
    return prompts if concurrency == 1 else [prompts[i % len(prompts)] for i in range(batch_prompts)]


def main():
    args = parse_args()
    if not args.ours_only and not Path(args.vllm_python).exists():
        sys.exit(f"no vLLM at {args.vllm_python}: run `make vllm-venv` first")
    dtypes = args.ours_dtypes.split(",") if args.ours_dtypes else [args.dtype]
    rows, failed = {}, []
    for dtype in dtypes:
        engine = "ours" if dtypes == [args.dtype] else f"ours ({SHORT[dtype]})"
        prompts = run_ours(args, getattr(torch, dtype), engine, rows)
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
        json.dump(prompts, handle)
    target_dir, head_dir = resolve_model_dir(args.target), str(resolve_draft(args.draft))
    drafts = [("", "plain", "eagle3"), (head_dir, f"eagle3 chain of {args.k}", "eagle3")]
    if args.lm_draft:
        drafts.append((args.lm_draft, f"LM draft, chain of {args.k}", "draft_model"))
    for compiled in () if args.ours_only else (False, True) if args.compiled else (False,):
        mode = "compiled" if compiled else "eager"
        for draft, label, method in drafts:
            result = vllm(args, handle.name, target_dir, draft, compiled, method)
            failed += [result["failed"]] if "failed" in result else []
            for run in result["runs"]:
                rows[(f"vllm ({mode})", label, run["concurrency"])] = run
    report(rows, vars(args) | {"vllm_failed": failed})


SHORT = {"bfloat16": "bf16", "float32": "fp32"}


def run_ours(args, dtype: torch.dtype, engine: str, rows: dict) -> list[list[int]]:
    """Our rows in one dtype (into ``rows``); returns the prompts' token ids."""
    target, tokenizer = load_target(args.target, dtype=dtype)
    head, _ = load_draft(args.draft, target, dtype)
    lm_draft = load_draft(args.lm_draft, target, dtype)[0] if args.lm_draft else None
    prompts = [chat_ids(tokenizer, [{"role": "user", "content": p}]) for p in HELDOUT_PROMPTS[: args.num_prompts]]
    configs = {"plain": (None, {}),
               f"chain of {args.k}": (head, dict(num_draft_tokens=args.k, draft_tree=None, draft_confidence=0.0)),
               "auto (tree + ngram:8)": (head, dict(num_draft_tokens="auto", draft_tree="auto",
                                                    draft_retrieval="auto"))}
    if lm_draft is not None:
        configs[f"LM draft, chain of {args.k}"] = (lm_draft, dict(num_draft_tokens=args.k))
    for concurrency in map(int, args.concurrency.split(",")):
        batch = requests_at(prompts, concurrency, args.batch_prompts)
        runs = {label: [] for label in configs}
        for round_ in range(args.rounds):  # in turns, the order reversed every other round: the host drifts
            for label in (list(configs) if round_ % 2 == 0 else list(configs)[::-1]):
                draft, settings = configs[label]
                runs[label].append(ours(target, draft, batch, args.max_tokens, concurrency, **settings))
        for label, done in runs.items():
            rows[(engine, label, concurrency)] = done[0] | {
                "tokens_per_s": statistics.median(run["tokens_per_s"] for run in done),
                "rounds_tokens_per_s": [run["tokens_per_s"] for run in done],
                "vs_plain": round(statistics.median(run["tokens_per_s"] / plain["tokens_per_s"]
                                                    for run, plain in zip(done, runs["plain"])), 3)}
    return prompts


def report(rows: dict, settings: dict) -> None:
    """The table and the JSON line. Greedy outputs are compared per request with our plain decoding and
    with the same engine's plain decoding (in bf16, a batch's shape changes the rounding, so equal
    outputs are expected from fp32 runs; in bf16 the count says how far they drift)."""
    plain = {(engine, c): run["outputs"] for (engine, label, c), run in rows.items() if label == "plain"}
    ours_engine = {engine: engine for engine, _ in plain if engine.startswith("ours")}
    # "= ours plain": against ours in the run's --dtype where ours ran in it, else the first of ours
    reference = ours_engine.get(f"ours ({SHORT[settings['dtype']]})", ours_engine.get("ours", next(iter(ours_engine))))
    print(f"{'engine':16} {'decoding':24} {'conc.':>5} {'tok/s':>8} {'tau':>6} {'vs plain':>8} {'= ours plain':>12} "
          f"{'= own plain':>11}")
    table = []
    for (engine, label, concurrency), run in rows.items():
        ours_equal = _equal(run["outputs"], plain[(reference, concurrency)])
        own_equal = _equal(run["outputs"], plain[(engine, concurrency)])
        tau = run.get("tau", "")
        vs_plain = run.get("vs_plain", "")
        print(f"{engine:16} {label:24} {concurrency:5d} {run['tokens_per_s']:8.2f} {tau:>6} {vs_plain:>8} "
              f"{ours_equal:>12} {own_equal:>11}")
        table.append({"engine": engine, "decoding": label, "concurrency": concurrency,
                      "tokens_per_s": run["tokens_per_s"], "tau": run.get("tau"),
                      "outputs_equal_ours_plain": ours_equal, "outputs_equal_own_plain": own_equal}
                     | ({"accepted_per_position": run["accepted_per_position"]} if "accepted_per_position" in run
                        else {})
                     | {key: run[key] for key in ("rounds_tokens_per_s", "vs_plain") if key in run})
    print(json.dumps({"settings": settings, "rows": table}))


def _equal(outputs: list, reference: list) -> str:
    return f"{sum(a == b for a, b in zip(outputs, reference))}/{len(reference)}"


if __name__ == "__main__":
    main()
