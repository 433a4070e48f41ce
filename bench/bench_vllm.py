"""Our engine against vLLM's CPU build on the same prompts and settings: plain decoding and our head
(vLLM: a chain of k, its ``eagle3`` method; ours: the same chain, and the tree with its retrieval branch),
one request at a time and at higher concurrency, tokens/s and τ side by side.

    make vllm-venv                                   # once: vLLM's CPU build in .venv-vllm (not part of make test)
    python bench/bench_vllm.py                       # 12 held-out chat prompts, 64 tokens, greedy, bf16
    python bench/bench_vllm.py --concurrency 1,4,16 --draft default --k 4

vLLM runs in its own virtualenv (``bench/vllm_side.py``, one process per configuration, so the two
never share a process); both engines decode the same token ids (the chat template applied here).
Greedy outputs are compared token for token. Prints a table, then ONE JSON line.
"""

from __future__ import annotations

import argparse
import json
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
    parser.add_argument("--k", type=int, default=4, help="the chain's length, both engines")
    parser.add_argument("--num-prompts", type=int, default=12)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--concurrency", default="1,4,16")
    parser.add_argument("--vllm-python", default=str(ROOT / ".venv-vllm" / "bin" / "python"))
    parser.add_argument("--compiled", action="store_true", help="also vLLM's compiled mode (slow to start)")
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


def vllm(args, prompts_file: str, target_dir: Path, draft: str = "", compiled: bool = False) -> dict:
    command = [args.vllm_python, str(ROOT / "bench" / "vllm_side.py"), "--model", str(target_dir), "--prompts",
               prompts_file, "--max-tokens", str(args.max_tokens), "--concurrency", args.concurrency]
    if draft:
        command += ["--draft", draft, "--method", "eagle3", "--k", str(args.k)]
    if compiled:
        command.append("--compiled")
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"vLLM failed ({' '.join(command)}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main():
    args = parse_args()
    if not Path(args.vllm_python).exists():
        sys.exit(f"no vLLM at {args.vllm_python}: run `make vllm-venv` first")
    target, tokenizer = load_target(args.target, dtype=torch.bfloat16)
    head, _ = load_draft(args.draft, target, torch.bfloat16)
    prompts = [chat_ids(tokenizer, [{"role": "user", "content": p}]) for p in HELDOUT_PROMPTS[: args.num_prompts]]
    target_dir, head_dir = resolve_model_dir(args.target), str(resolve_draft(args.draft))
    rows = {}
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
        json.dump(prompts, handle)
    for concurrency in map(int, args.concurrency.split(",")):
        rows[("ours", "plain", concurrency)] = ours(target, None, prompts, args.max_tokens, concurrency)
        rows[("ours", f"chain of {args.k}", concurrency)] = ours(
            target, head, prompts, args.max_tokens, concurrency, num_draft_tokens=args.k, draft_tree=None,
            draft_confidence=0.0)
        rows[("ours", "auto (tree + ngram:8)", concurrency)] = ours(
            target, head, prompts, args.max_tokens, concurrency, num_draft_tokens="auto", draft_tree="auto",
            draft_retrieval="auto")
    for compiled in (False, True) if args.compiled else (False,):
        mode = "compiled" if compiled else "eager"
        for draft, label in (("", "plain"), (head_dir, f"eagle3 chain of {args.k}")):
            for run in vllm(args, handle.name, target_dir, draft, compiled)["runs"]:
                rows[(f"vllm ({mode})", label, run["concurrency"])] = run
    report(rows)


def report(rows: dict) -> None:
    reference = {c: run["outputs"] for (engine, label, c), run in rows.items() if engine == "ours" and label == "plain"}
    print(f"{'engine':16} {'decoding':24} {'conc.':>5} {'tok/s':>8} {'tau':>6} {'same output':>12}")
    table = []
    for (engine, label, concurrency), run in rows.items():
        same = run["outputs"] == reference[concurrency]
        tau = run.get("tau", "")
        print(f"{engine:16} {label:24} {concurrency:5d} {run['tokens_per_s']:8.2f} {tau:>6} {same!s:>12}")
        table.append({"engine": engine, "decoding": label, "concurrency": concurrency,
                      "tokens_per_s": run["tokens_per_s"], "tau": run.get("tau"), "outputs_equal_ours_plain": same}
                     | ({"accepted_per_position": run["accepted_per_position"]} if "accepted_per_position" in run
                        else {}))
    print(json.dumps({"rows": table}))


if __name__ == "__main__":
    main()
