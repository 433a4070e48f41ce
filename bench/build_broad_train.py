"""The training data of the v4 default head, committed as token ids: the target's answers to the broad
task mix, and a share of v3's answers (Python chat, ``bench/data/default-draft-train-v2.jsonl.gz``), so the
head fine-tuned from v3 keeps its chat.

    specdistill make-prompts --source tasks --mix broad --max-prompts 1500 --out runs/v4/prompts.jsonl
    specdistill generate-data --prompts runs/v4/prompts-run.jsonl --out runs/v4/broad-answers.jsonl \\
        --max-tokens 192 --temperature 0.7 --batch-size 32 --keep-truncated
    python bench/build_broad_train.py --answers runs/v4/broad-answers.jsonl --prompts runs/v4/prompts.jsonl

(``prompts-run.jsonl`` is the subset of ``prompts.jsonl`` answered in the time at hand: every task, long
documents included; ``bench/RESULTS.md`` has the counts.) Every prompt comes from this Python's standard
library or the project's templates (``specdistill.data.task_prompts``); none is a held-out or benchmark prompt.
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
from collections import Counter


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--answers", default="runs/v4/broad-answers.jsonl", help="teacher records of the broad mix")
    parser.add_argument("--prompts", default="runs/v4/prompts.jsonl", help="the prompt file (for the categories)")
    parser.add_argument("--chat", default="bench/data/default-draft-train-v2.jsonl.gz", help="v3's answers")
    parser.add_argument("--chat-records", type=int, default=700, help="how many of v3's records join")
    parser.add_argument("--out", default="bench/data/default-draft-train-v4.jsonl.gz")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    category = {row["id"]: row.get("category", "?") for row in map(json.loads, open(args.prompts))}
    rows = [{"prompt_ids": r["prompt_ids"], "answer_ids": r["answer_ids"],
             "category": category.get(r["id"].rsplit("-t", 1)[0], "?") + ("-turn2" if "-t" in r["id"] else "")}
            for r in map(json.loads, open(args.answers)) if r["answer_ids"]]
    chat = [json.loads(line) for line in gzip.open(args.chat, "rt")]
    rng = random.Random(args.seed)
    rows += [{"prompt_ids": r["prompt_ids"], "answer_ids": r["answer_ids"], "category": "v3-python-chat"}
             for r in rng.sample(chat, min(args.chat_records, len(chat)))]
    rng.shuffle(rows)
    with gzip.open(args.out, "wt") as out:
        for row in rows:
            out.write(json.dumps(row) + "\n")
    answers, prompts = Counter(), Counter()
    for row in rows:
        answers[row["category"]] += len(row["answer_ids"])
        prompts[row["category"]] += 1
    print(json.dumps({"records": len(rows), "answer_tokens": sum(answers.values()),
                      "prompt_tokens": sum(len(r["prompt_ids"]) for r in rows),
                      "by_category": {c: [prompts[c], answers[c]] for c in sorted(prompts)}, "out": args.out}))


if __name__ == "__main__":
    main()
