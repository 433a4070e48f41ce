"""The draft recipe study: which draft pays on this machine, and why (acceptance against step cost).

Every candidate trains on the same target answers (``--data``, records as ``generate-data``
writes them; a candidate may take only the first N answer tokens) for the same number of
steps unless it says otherwise, and is measured on the same held-out chat prompts the
project never trains on:

    teacher-forced α per draft position and predicted τ (k = 1..8)
    decoding, greedy, bf16, k = 4, drafting stops below draft probability 0.4 (as served):
        measured α and τ, the draft's step cost against the target's, tokens/s, and the
        speedup over the target alone (our engine) and over HF ``generate`` (the faster of
        fp32 and bf16, measured in the same run)

Trained candidates are kept in ``--runs`` and reused, so a rerun only measures.

    python bench/draft_recipes.py --data runs/data/answers.jsonl --steps 300
    python bench/draft_recipes.py --only "EAGLE-3 head" "pruned 4 layers"   # some rows

Writes ``results.json`` and ``table.md`` to ``--out``; prints the table, then ONE JSON line.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from workflow import head_recipe, load_trained  # noqa: E402

from specdistill.bench import measure_hf_baseline  # noqa: E402
from specdistill.data.batches import record_rows  # noqa: E402
from specdistill.data.jsonl import append_rows, read_rows  # noqa: E402
from specdistill.data.prompts import HELDOUT_PROMPTS  # noqa: E402
from specdistill.measure import measure_speculative, teacher_forced_acceptance  # noqa: E402
from specdistill.models import load_draft_vocab, load_target  # noqa: E402
from specdistill.models.eagle3 import Eagle3Head  # noqa: E402
from specdistill.teacher.target_answers import answer_prompts  # noqa: E402
from specdistill.training.config import TrainConfig
from specdistill.training.eagle3_head import head_acceptance  # noqa: E402
from specdistill.training.trainer import train  # noqa: E402

K, CONFIDENCE, LM_DRAFT_VOCAB = 4, 0.4, 8192
HEAD = head_recipe()  # the shipped preset's (specdistill/presets/default-draft.yaml) but for its data and length

# name -> TrainConfig overrides; "data_tokens" takes the first N answer tokens, "steps_factor" scales steps,
# "steps" fixes them.
CANDIDATES = {
    "pruned 4 layers (0,1,2,-1)": {"keep_layers": "0,1,2,-1"},
    "pruned 2 layers (0,-1)": {"keep_layers": "0,-1"},
    "pruned 6 layers (0,1,2,3,4,-1)": {"keep_layers": "0,1,2,3,4,-1"},
    "pruned 4 layers, trained embeddings": {"keep_layers": "0,1,2,-1", "train_embeddings": True},
    "pruned 4 layers, tvd": {"keep_layers": "0,1,2,-1", "divergence": "tvd"},
    "pruned 4 layers, jsd": {"keep_layers": "0,1,2,-1", "divergence": "jsd"},
    "EAGLE-3 head": HEAD,
    "EAGLE-3 head, vocab 2048": HEAD | {"head_vocab_size": 2048},
    "EAGLE-3 head, vocab 32768": HEAD | {"head_vocab_size": 32768},
    "EAGLE-3 head, 40k tokens": HEAD | {"data_tokens": 40_000},
    "EAGLE-3 head, 200k tokens": HEAD | {"data_tokens": 200_000},
    "EAGLE-3 head, tvd": HEAD | {"divergence": "tvd"},
    "EAGLE-3 head, half the steps": HEAD | {"steps_factor": 0.5},
    "EAGLE-3 head, 1000 steps (the preset)": HEAD | {"steps": 1000},
}


def subset(data: Path, tokens: int, runs: Path) -> Path:
    """The first records of ``data`` holding ``tokens`` answer tokens, as a file of their own."""
    path = runs / f"data-{tokens}.jsonl"
    if not path.exists():
        rows, total = [], 0
        for row in read_rows(data):
            if total >= tokens:
                break
            rows.append(row)
            total += len(row["answer_ids"])
        append_rows(path, rows)
    return path


def candidate_config(name: str, base: TrainConfig, data: Path, runs: Path) -> TrainConfig:
    """The candidate's training settings: the study's base with the candidate's overrides."""
    overrides = dict(CANDIDATES[name])
    tokens = overrides.pop("data_tokens", None)
    steps = overrides.pop("steps", max(1, round(base.steps * overrides.pop("steps_factor", 1.0))))
    out = runs / "".join(c if c.isalnum() else "-" for c in name).strip("-")
    config = replace(base, output_dir=str(out), steps=steps,
                     data=str(subset(data, tokens, runs) if tokens else data), **overrides)
    if config.draft_type == "eagle3":  # heads on the same data share one cache of the target's features
        config = replace(config, feature_cache=str(runs / f"features-{Path(config.data).stem}"))
    return config


def make(name: str, base: TrainConfig, data: Path, runs: Path, target, tokenizer):
    """The candidate's trained draft (trained now unless its run finished before) and its directory."""
    config = candidate_config(name, base, data, runs)
    out, steps = Path(config.output_dir), config.steps
    history = out / "checkpoint" / "history.json"
    if (out / "final" / "config.json").exists() and history.exists() and \
            json.loads(history.read_text())[-1]["step"] >= steps:
        print(f"{name}: reusing {out / 'final'}", flush=True)
    else:
        print(f"{name}: training {steps} steps", flush=True)
        target.float()
        train(config, target=target, tokenizer=tokenizer, progress=True)
    return load_trained(out / "final", target), out / "final"


def measure(draft, final: Path, target, tokenizer, prompts, rows, max_new: int) -> dict:
    target.float()
    head = isinstance(draft, Eagle3Head)
    forced = (head_acceptance(target, draft.float(), rows, max_k=8) if head
              else teacher_forced_acceptance(target, draft.float(), rows))
    target.to(torch.bfloat16)
    vocab = None if head else load_draft_vocab(final, LM_DRAFT_VOCAB)
    run = measure_speculative(target, draft.to(torch.bfloat16), tokenizer, prompts, num_draft_tokens=K,
                              max_new_tokens=max_new, progress=False, draft_confidence=CONFIDENCE, draft_vocab=vocab)
    return {"teacher_forced_alpha": forced["alpha"], "alpha_per_position": forced["alpha_per_position"],
            "predicted_tau": forced["predicted_tau"], "alpha": run["alpha"], "tau": run["tau"],
            "tokens_per_s": run["tokens_per_s"], "draft_step_seconds": run["draft_step_seconds"],
            "verify_seconds": run["verify_seconds"], "mean_k": run["mean_k"],
            "draft_params_m": round(sum(p.numel() for p in draft.parameters()) / 1e6, 1)}


def table(results: dict, alone: float, hf: float, target_step: float) -> str:
    lines = ["| candidate | held-out α (pos 1..4) | measured τ | draft step (c) | tok/s | vs target alone | "
             "vs HF generate | command |", "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    for name, r in results.items():
        positions = " / ".join(f"{a:.2f}" for a in r["alpha_per_position"][:4])
        c = r["draft_step_seconds"] / target_step
        lines.append(f"| {name} | {positions} | {r['tau']:.2f} | {r['draft_step_seconds'] * 1e3:.1f} ms "
                     f"({c:.2f}) | {r['tokens_per_s']:.1f} | {r['tokens_per_s'] / alone:.2f}x | "
                     f"{r['tokens_per_s'] / hf:.2f}x | `{r['command']}` |")
    return "\n".join(lines)


def command(config: TrainConfig, base: TrainConfig) -> str:
    """The ``specdistill train`` command that makes the candidate: the study's base settings, then its own."""
    always = ("data", "steps", "batch_size", "seq_len", "lr")
    changed = [k for k, v in vars(config).items() if vars(base).get(k) != v and k not in always + ("output_dir",)]
    flags = " ".join(f"--{k.replace('_', '-')} {getattr(config, k)}" for k in always + tuple(changed))
    return f"specdistill train {flags} --output-dir {config.output_dir}"


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="runs/data/answers.jsonl", help="target answers (generate-data records)")
    parser.add_argument("--steps", type=int, default=300, help="steps per candidate (batch 8 x 256 tokens)")
    parser.add_argument("--only", nargs="*", default=None, help="candidates to run (default: all)")
    parser.add_argument("--prompts", type=int, default=8, help="held-out prompts decoded")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--runs", default="runs/recipes")
    parser.add_argument("--out", default=f"bench/results/{datetime.date.today()}-recipes")
    parser.add_argument("--table-only", action="store_true", help="rewrite the table from --out/results.json")
    args = parser.parse_args()
    unknown = set(args.only or []) - set(CANDIDATES)
    if unknown or not Path(args.data).exists():
        sys.exit(f"unknown candidates {sorted(unknown)}" if unknown else f"no data at {args.data}: make it with "
                 "`specdistill generate-data` (see bench/RESULTS.md, 'The draft that pays')")
    return args


def write_outputs(summary: dict, args, base: TrainConfig) -> str:
    """results.json and table.md in --out, each row with the command that makes its draft; the table."""
    for name, result in summary["candidates"].items():
        result["command"] = command(candidate_config(name, base, Path(args.data), Path(args.runs)), base)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    alone = summary["target_alone_tokens_per_s"]
    text = table(summary["candidates"], alone, summary["hf_generate_tokens_per_s"], 1 / alone)
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    (out / "table.md").write_text(text + "\n")
    return text


def main():
    args = parse_args()
    runs = Path(args.runs)
    base = TrainConfig(data=args.data, steps=args.steps, batch_size=8, seq_len=256, lr=1e-3, save_every=50,
                       report_to="none", eval_every=0)
    if args.table_only:
        print(write_outputs(json.loads((Path(args.out) / "results.json").read_text()), args, base))
        return
    started = time.perf_counter()
    runs.mkdir(parents=True, exist_ok=True)
    target, tokenizer = load_target()
    target.to(torch.bfloat16)
    rows = record_rows(answer_prompts(target, tokenizer, HELDOUT_PROMPTS, runs / "eval_answers.jsonl"),
                       tokenizer.eos_token_id)
    prompts = HELDOUT_PROMPTS[: args.prompts]
    hf = max(r["tokens_per_s"] for r in measure_hf_baseline(target, tokenizer, prompts, args.max_new_tokens,
                                                            torch.bfloat16).values())
    alone = measure_speculative(target, None, tokenizer, prompts, num_draft_tokens=0,
                                max_new_tokens=args.max_new_tokens, progress=False)["tokens_per_s"]
    results = {}
    for name in args.only or CANDIDATES:
        draft, final = make(name, base, Path(args.data), runs, target, tokenizer)
        results[name] = measure(draft, final, target, tokenizer, prompts, rows, args.max_new_tokens)
        print(f"{name}: held-out alpha {results[name]['teacher_forced_alpha']:.3f}, tau {results[name]['tau']:.2f}, "
              f"{results[name]['tokens_per_s']:.1f} tok/s", flush=True)
    summary = {"target_alone_tokens_per_s": round(alone, 2), "hf_generate_tokens_per_s": round(hf, 2),
               "steps": args.steps, "data": args.data, "candidates": results,
               "minutes": round((time.perf_counter() - started) / 60, 1)}
    print(write_outputs(summary, args, base))
    print(json.dumps({"out": args.out, "minutes": summary["minutes"], "speedup_vs_hf_generate": {
        name: round(r["tokens_per_s"] / hf, 3) for name, r in results.items()}}))


if __name__ == "__main__":
    main()
