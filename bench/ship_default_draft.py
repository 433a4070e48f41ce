"""Package a trained head as the draft this package ships (``specdistill/default_draft``).

    specdistill train --preset default-draft                        # makes runs/default-draft/{final,best}
    specdistill bench --draft runs/default-draft/best > runs/default-draft/bench.log
    python bench/ship_default_draft.py --head runs/default-draft/best --bench runs/default-draft/bench.log

The folder gets the head's bf16 weights, its speculators config, a sha256 checksum and a
model card with how it was made and what it measured (the last JSON line of the bench log). With
``--by-category LOG ...`` (outputs of ``specdistill bench --draft HEAD --prompts
bench/prompts/broad-heldout.jsonl --by-category ...``, as served and with the tree on every step) the card
also gets τ and speedup per task. A run trained without ``--eval-every`` gets its held-out α measured here.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from types import SimpleNamespace

from specdistill.serve.tree import TreeShape

from specdistill.bench import MeasureConfig
from specdistill.models import load_target
from specdistill.models.drafts import package_head
from specdistill.models.eagle3_io import load_head
from specdistill.training.heldout_eval import HeldOutEval
from specdistill.training.sources import pad_id

DEST = Path(__file__).parents[1] / "specdistill" / "default_draft"


def per_task_section(summary: dict, command: str) -> str:
    """The card's table of τ and speedups per task, from ``bench --by-category``'s JSON line."""
    rows = "\n".join(f"| {task} | {s['turns']} | {s['tau']:.2f} | {s['tokens_per_s']:.1f} | "
                     f"{s['speedup_vs_hf_generate']:.2f}x | {s['measured_speedup_over_our_target']:.2f}x |"
                     for task, s in summary["by_category"].items())
    new_tokens = summary.get("max_new_tokens", MeasureConfig().max_new_tokens)
    mean = (f"| mean | | {summary['mean_tau']:.2f} | | {summary['mean_speedup_vs_hf_generate']:.2f}x | "
            f"{summary['mean_speedup_over_our_target']:.2f}x |")
    k = summary["num_draft_tokens"]
    how = (f"as served (k = {k}: the tree, a chain or nothing each step, by measured tokens/s)" if k == "auto"
           else f"with the tree {TreeShape.parse(summary['draft_tree'])} on every step (k = {k})")
    return f"""
## Measured per task, {"as served" if k == "auto" else "the tree on every step"}

The project's broad held-out set (`bench/prompts/broad-heldout.jsonl`: hand-written prompts of eight
tasks, never trained on), greedy, bf16, {new_tokens} new tokens, 2-core CPU, {how}:

```sh
{command}
```

| task | turns | τ | tok/s | over HF `generate` | over our target alone |
| --- | ---: | ---: | ---: | ---: | ---: |
{rows}
{mean}
"""


def card(head: Path, bench: dict, training: dict, data_note: str, training_note: str = "", per_task: str = "") -> str:
    evals = [h for h in training["history"] if "eval" in h] or [{"eval": {}}]
    # best/ holds the draft of the best held-out α; final/ the last one
    chosen = max(evals, key=lambda h: h["eval"].get("alpha", -1)) if head.name == "best" else evals[-1]
    eval_figures = chosen["eval"]
    # A head fine-tuned in several runs (the training note says how) started from the preset's.
    recipe = " of the head it started from" if training_note else ""
    training_note = training_note + " " if training_note else ""
    rows = [("held-out α, teacher-forced (sampling)", eval_figures.get("alpha")),
            ("held-out α per draft position, teacher-forced", eval_figures.get("alpha_per_position", [])[:6]),
            ("predicted τ for k = 1..6, teacher-forced", eval_figures.get("predicted_tau", [])[:6]),
            ("measured α, decoding", bench["alpha"]), ("measured τ (tokens per target step)", bench["tau"]),
            ("tokens/s with the head", bench["tokens_per_s"]),
            ("target alone, HF generate (the faster of fp32 and bf16), tokens/s", bench["hf_generate_tokens_per_s"]),
            ("speedup over HF generate", bench["speedup_vs_hf_generate"]),
            ("speedup over the target alone on our engine: measured / predicted",
             f"{bench['measured_speedup_over_our_target']} / {bench['predicted_speedup_over_our_target']}"),
            ("cost ratio c (draft step / target step)", bench["cost_ratio"])]
    table = "\n".join(f"| {name} | `{value}` |" for name, value in rows)
    config = training["config"]
    return f"""---
library_name: specdistill
tags: [speculative-decoding, eagle3, speculators, draft-model, distillation]
base_model: HuggingFaceTB/SmolLM2-135M-Instruct
---
# The default draft of specdistill: an EAGLE-3 head for SmolLM2-135M-Instruct

An EAGLE-3-style draft head in the `speculators` format. It reads the target's hidden states
`{config["head_layers"] or "[2, 15, 27]"}` (the inputs of those layers) and the embedding of the last token,
runs one decoder layer, and predicts over the {config["head_vocab_size"]} most frequent tokens of its
training answers. The target's embeddings are shared, not stored: only the head's own weights
are here (bf16, `checksum.json` has their sha256). `datastore.npz` beside them is not the head's: it
holds the target's answers the head trained on, as token ids, for the retrieval branch's store
(`--draft-retrieval auto`; `python bench/build_datastore.py` makes it).

## How it was made

Training-time test over {config["ttt_steps"]} draft positions (position j weighs
{config.get("ttt_decay", 1.0)}^(j - 1)), {config["divergence"]} at
T = {config["temperature"]}, {training["steps"]} steps of {config["batch_size"]} x {config["seq_len"]} tokens,
lr {config["lr"]}, on `{config["data"]}`: {data_note} None of the held-out prompts it is measured on
is among them. {training_note}Exported from `{head}` (step {chosen.get("step", training["steps"])}).
`specdistill train --preset default-draft` (`specdistill/presets/default-draft.yaml`) is the recipe{recipe}:
it makes the same kind of data itself (the target's answers to the built-in prompt sets) and trains
the same head.

## Measured

Greedy, bf16, k = {bench["num_draft_tokens"]} with the draft-confidence stop at {bench["draft_confidence"]},
{bench["num_prompts"]} held-out chat prompts, 2-core CPU (`specdistill bench --draft default`):

| figure | value |
| --- | --- |
{table}
{per_task}
## Use

```python
from specdistill.drafts import load_draft
head, _ = load_draft("default", target)   # target: SmolLM2-135M-Instruct from specdistill.models.load_target()
```

`specdistill serve` and `specdistill bench` use it unless told otherwise. vLLM:

```sh
vllm serve HuggingFaceTB/SmolLM2-135M-Instruct \\
  --speculative-config '{{"method": "eagle3", "model": "<this folder>", "num_speculative_tokens": 4}}'
```
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--head", default="runs/default-draft/best")
    parser.add_argument("--bench", default="runs/default-draft/bench.log", help="output of specdistill bench")
    parser.add_argument("--data-note", default="the target's own answers to the project's prompts.",
                        help="one or two sentences on the training data, for the card")
    parser.add_argument("--training-note", default="", help="a sentence on how the run went (resumes), for the card")
    parser.add_argument("--by-category", nargs="*", default=[],
                        help="outputs of specdistill bench --by-category on the broad set (a table each)")
    args = parser.parse_args()
    head = Path(args.head)
    bench = json.loads(Path(args.bench).read_text().strip().splitlines()[-1])
    run = head.parent
    history = json.loads((run / "checkpoint" / "history.json").read_text())
    training = {"config": json.loads((run / "train_config.json").read_text()), "history": history,
                "steps": history[-1]["step"]}
    per_task = ""
    for log in args.by_category:
        summary = json.loads(Path(log).read_text().strip().splitlines()[-1])
        command = ("specdistill bench --draft default --prompts bench/prompts/broad-heldout.jsonl --by-category "
                   f"--num-prompts {max(s['num_prompts'] for s in summary['by_category'].values())} "
                   f"--num-draft-tokens {summary['num_draft_tokens']}")
        per_task += per_task_section(summary, command)
    target, tokenizer = load_target()
    if not any("eval" in h for h in history):  # a run without --eval-every: measure the card's held-out α now
        with tempfile.TemporaryDirectory() as scratch:
            config = SimpleNamespace(eval_prompts=12, output_dir=scratch, eval_decode=0)  # as --eval-every's
            history[-1]["eval"] = HeldOutEval(config, target, tokenizer, pad_id(tokenizer), progress=True).run(
                load_head(head, target))
    card_text = card(head, bench, training, args.data_note, args.training_note, per_task)
    out = package_head(head, DEST, target, card_text)
    (out / "model.safetensors").chmod(0o644)
    print(json.dumps(json.loads((out / "checksum.json").read_text()) | {"out": str(out)}))


if __name__ == "__main__":
    main()
