"""Traffic captured by ``specdistill serve --capture DIR`` as training records.

Each finished record holds the prompt ids the target read and the answer ids it wrote, so a
draft for that target trains on them as they are: nothing is regenerated. Greedy captures are
the target's argmax answers, sampled ones its samples; both serve the forward-KL loss, whose
teacher distribution is recomputed over them anyway. Records of another target would teach
the draft someone else's answers: they are refused, by the target's name in each record.
Cancelled, failed and timed-out requests are skipped (their answers were cut short by the client
or an error, not by the target).
"""

from __future__ import annotations

import json
from pathlib import Path

from specdistill.models.loading import target_identity

CAPTURE_PATTERN = "capture-*.jsonl"


def is_capture_dir(spec: str) -> bool:
    path = Path(spec).expanduser()
    return path.is_dir() and any(path.glob(CAPTURE_PATTERN))


def read_capture(spec: str, target: str):
    """The finished records of a capture directory as a ``datasets.Dataset`` of prompt_ids and
    answer_ids (the "ids" kind). ValueError if none is usable or one was answered by another target."""
    import datasets

    records, skipped, want = [], 0, target_identity(target)
    for path in sorted(Path(spec).expanduser().glob(CAPTURE_PATTERN)):
        with path.open(encoding="utf-8") as handle:
            lines = handle.read().splitlines()
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                status, answer = record["status"], record["answer_ids"]
                prompt, served_by = record["prompt_ids"], record["target"]
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                if number == len(lines) and isinstance(err, json.JSONDecodeError):
                    skipped += 1  # a last line cut short: the server stopped, or is still writing it
                    continue
                raise ValueError(f"{path}:{number} is not a capture record ({err!r}); was it written by "
                                 "`specdistill serve --capture`?") from err
            if served_by != want:
                raise ValueError(f"{path}:{number} was answered by the target {served_by!r}, not {want!r}: its "
                                 "answers are not this target's. Train with --target set to the target that served "
                                 "them, or keep captures of different targets in different folders")
            if status != "finished" or not answer:
                skipped += 1
                continue
            records.append({"prompt_ids": prompt, "answer_ids": answer})
    if not records:
        raise ValueError(f"{spec} holds no finished request to train on ({skipped} cancelled, failed or empty)")
    return datasets.Dataset.from_list(records)
