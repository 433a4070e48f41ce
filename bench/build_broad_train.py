"""The training data of the default head, committed as token ids: the target's answers to the broad task mix.

v4 (heads v4-v6): the broad mix and a share of v3's answers (Python chat,
``bench/data/default-draft-train-v2.jsonl.gz``), so the head fine-tuned from v3 keeps its chat:

    specdistill make-prompts --source tasks --mix broad --max-prompts 1500 --out runs/v4/prompts.jsonl
    specdistill generate-data --prompts runs/v4/prompts-run.jsonl --out runs/v4/broad-answers.jsonl \\
        --max-tokens 192 --temperature 0.7 --batch-size 32 --keep-truncated
    python bench/build_broad_train.py --answers runs/v4/broad-answers.jsonl --prompts runs/v4/prompts.jsonl

(``prompts-run.jsonl`` is the subset of ``prompts.jsonl`` answered in the time at hand.)

v7: everyday chat, translation and extraction answered greedily, and requests to translate the target's own
translations back into English (single turns, as users send them); training replays v4 (``--replay``):

    specdistill make-prompts --source tasks --mix everyday:7,translation:2,extraction:1 --max-prompts 1000 \\
        --seed 7 --out runs/v7/prompts.jsonl
    specdistill generate-data --prompts runs/v7/prompts.jsonl --out runs/v7/answers.jsonl \\
        --max-tokens 160 --temperature 0 --batch-size 32 --keep-truncated
    python bench/build_broad_train.py --into-english runs/v7/english-prompts.jsonl \\
        --answers runs/v7/answers.jsonl --prompts runs/v7/prompts.jsonl
    specdistill generate-data --prompts runs/v7/english-prompts.jsonl --out runs/v7/english-answers.jsonl \\
        --max-tokens 160 --temperature 0 --batch-size 32 --keep-truncated
    python bench/build_broad_train.py --answers runs/v7/answers.jsonl runs/v7/english-answers.jsonl \\
        --prompts runs/v7/prompts.jsonl runs/v7/english-prompts.jsonl --chat-records 0 \\
        --out bench/data/default-draft-train-v7.jsonl.gz

v9: the tasks the shipped head (v8) drafts worst on the broad held-out set, answered greedily, second turns after
the target's own first answers; training replays v4 (its Python chat and code):

    specdistill make-prompts --source tasks --max-prompts 1200 --seed 21 --out runs/v9data/prompts.jsonl \
        --mix everyday:3,translation:2,summarization:2,qa:2,rag:2,extraction:1,math:1
    specdistill generate-data --prompts runs/v9data/prompts.jsonl --out runs/v9data/answers.jsonl \
        --max-tokens 160 --temperature 0 --batch-size 32 --keep-truncated
    python bench/build_broad_train.py --answers runs/v9data/answers.jsonl --prompts runs/v9data/prompts.jsonl \
        --chat-records 0 --out bench/data/default-draft-train-v9.jsonl.gz

Every prompt comes from this Python's standard library, the project's templates (``specdistill.data.task_prompts``,
``specdistill.data.everyday_prompts``) or the target's own text; none is a held-out or benchmark prompt.
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import re
from collections import Counter


def read_jsonl(paths: list[str]) -> list[dict]:
    return [json.loads(line) for path in paths for line in open(path) if line.strip()]


def category_of(answer: dict, category: dict[str, str]) -> str:
    base, turn2 = answer["id"].rsplit("-t", 1)[0], "-t" in answer["id"]
    return category.get(base, "?") + ("-turn2" if turn2 else "")


def into_english(answers: list[dict], prompts: list[dict], count: int, seed: int) -> list[dict]:
    """Single-turn requests to translate the target's own first-turn translations into English (those that do
    not loop: a greedy 135M model often repeats itself in a language it knows little)."""
    language = {row["id"]: m.group(1) for row in prompts
                if (m := re.match(r"Translate into (\w+):", row.get("prompt") or row.get("turns", [""])[0]))}
    rows = []
    for answer in answers:
        text = " ".join(answer.get("response", "").split())
        words = text.split()
        if answer["id"] in language and 20 <= len(text) <= 400 and len(set(words)) >= 0.7 * len(words):
            rows.append({"id": answer["id"] + "-en", "prompt": f"Translate into English: {text}",
                         "category": "translation-into-english",
                         "source": f"the target's {language[answer['id']]} translation"})
    random.Random(seed).shuffle(rows)
    return rows[:count]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--answers", nargs="+", default=["runs/v4/broad-answers.jsonl"], help="teacher records")
    parser.add_argument("--prompts", nargs="+", default=["runs/v4/prompts.jsonl"], help="prompt files (categories)")
    parser.add_argument("--chat", default="bench/data/default-draft-train-v2.jsonl.gz", help="v3's answers")
    parser.add_argument("--chat-records", type=int, default=700, help="how many of v3's records join")
    parser.add_argument("--into-english", default="", help="write into-English prompts here and stop")
    parser.add_argument("--into-english-count", type=int, default=160)
    parser.add_argument("--out", default="bench/data/default-draft-train-v4.jsonl.gz")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    prompts, answers = read_jsonl(args.prompts), read_jsonl(args.answers)
    if args.into_english:
        made = into_english(answers, prompts, args.into_english_count, args.seed)
        with open(args.into_english, "w") as out:
            out.writelines(json.dumps(row) + "\n" for row in made)
        print(json.dumps({"into_english_prompts": len(made), "out": args.into_english}))
        return
    category = {row["id"]: row.get("category", "?") for row in prompts}
    rows = [{"prompt_ids": r["prompt_ids"], "answer_ids": r["answer_ids"], "category": category_of(r, category)}
            for r in answers if r["answer_ids"]]
    rng = random.Random(args.seed)
    if args.chat_records:
        chat = [json.loads(line) for line in gzip.open(args.chat, "rt")]
        rows += [{"prompt_ids": r["prompt_ids"], "answer_ids": r["answer_ids"], "category": "v3-python-chat"}
                 for r in rng.sample(chat, min(args.chat_records, len(chat)))]
    rng.shuffle(rows)
    with gzip.open(args.out, "wt") as out:
        for row in rows:
            out.write(json.dumps(row) + "\n")
    answer_tokens, records = Counter(), Counter()
    for row in rows:
        answer_tokens[row["category"]] += len(row["answer_ids"])
        records[row["category"]] += 1
    print(json.dumps({"records": len(rows), "answer_tokens": sum(answer_tokens.values()),
                      "prompt_tokens": sum(len(r["prompt_ids"]) for r in rows),
                      "by_category": {c: [records[c], answer_tokens[c]] for c in sorted(records)}, "out": args.out}))


if __name__ == "__main__":
    main()
