"""The shipped corpus of the retrieval branch's datastore (``specdistill/default_draft/datastore.npz``):
the default target's own answers that its shipped head trained on (``bench/data``, every version, each
distinct answer once), as token ids of its tokenizer.

    python bench/build_datastore.py

Prints the answers and tokens written.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from specdistill.serve.datastore import CORPUS_FILE, save_head_corpus

ROOT = Path(__file__).resolve().parents[1]
VERSIONS = ("v1", "v2", "v4", "v7", "v9")
VOCAB_SIZE = 49152  # SmolLM2's tokenizer


def main():
    answers = []
    for version in VERSIONS:
        with gzip.open(ROOT / f"bench/data/default-draft-train-{version}.jsonl.gz", "rt") as lines:
            answers += [json.loads(line)["answer_ids"] for line in lines]
    tokens = save_head_corpus(ROOT / "specdistill/default_draft" / CORPUS_FILE, None, answers, VOCAB_SIZE)
    print(f"{len(set(map(tuple, answers)))} answers, {tokens} tokens (separators included)")


if __name__ == "__main__":
    main()
