"""Teacher records as they arrive: one JSON line per response, appended to ``--out`` and never
rewritten, so a rerun answers only the prompts not done yet. Empty, truncated and duplicate responses
go to ``<out>.dropped.jsonl`` with the reason; failed prompts to ``<out>.failures.jsonl``.
"""

from __future__ import annotations

import logging
from pathlib import Path

from specdistill.data.jsonl import append_rows, read_rows
from specdistill.teacher.generate_config import GenerateConfig

log = logging.getLogger(__name__)


def make_record(prompt: dict, sample: int, choice: dict, teacher: str, sampling: dict, usage: dict) -> dict:
    """One teacher record: the prompt's id and messages, one response (with its finish
    reason, and reasoning or token ids when there are any), who wrote it and how."""
    return {"id": prompt["id"], "sample": sample, "messages": prompt["messages"], **choice, "teacher": teacher,
            "sampling": sampling, "usage": usage}


class RecordWriter:
    """Appends a prompt's responses (kept, or dropped with a reason) and its failures,
    and counts them for the summary."""

    def __init__(self, config: GenerateConfig, teacher_name: str):
        self.out = Path(config.out)
        self.failures = self.out.with_suffix(".failures.jsonl")
        self.dropped = self.out.with_suffix(".dropped.jsonl")
        self.config, self.teacher_name = config, teacher_name
        kept, dropped = read_rows(self.out), read_rows(self.dropped)
        self.done = {row["id"] for row in kept + dropped}
        self.seen_responses = {row["response"] for row in kept}
        self.counts = {"records": 0, "dropped_empty": 0, "dropped_truncated": 0, "dropped_duplicate": 0,
                       "failures": 0, "prompt_tokens": 0, "completion_tokens": 0}
        self.already = len(self.done)

    def todo(self, prompts: list[dict]) -> list[dict]:
        """The prompts not answered yet, up to the request budget."""
        todo = [p for p in prompts if p["id"] not in self.done]
        return todo[: self.config.max_requests] if self.config.max_requests else todo

    def write(self, prompt: dict, choices: list[dict], usage: dict) -> None:
        """One prompt's responses: each choice {response, reasoning, finish_reason}."""
        kept, dropped = [], []
        for sample, choice in enumerate(choices):
            record = make_record(prompt, sample, choice, self.teacher_name, self.config.sampling(), usage)
            reason = self._drop_reason(choice)
            if reason:
                dropped.append(record | {"dropped": reason})
                self.counts[f"dropped_{reason}"] += 1
            else:
                kept.append(record)
                self.seen_responses.add(choice["response"])
        # Kept lines first: a kill between the two writes loses dropped lines only, never
        # marks a prompt done whose kept responses were not written.
        append_rows(self.out, kept)
        append_rows(self.dropped, dropped)
        self.done.add(prompt["id"])
        self.counts["records"] += len(kept)
        self.counts["prompt_tokens"] += usage.get("prompt_tokens", 0)
        self.counts["completion_tokens"] += usage.get("completion_tokens", 0)

    def fail(self, prompt: dict, error: BaseException, attempts: int | None = None) -> None:
        append_rows(self.failures, [{"id": prompt["id"], "messages": prompt["messages"],
                                     "error": f"{type(error).__name__}: {error}", "attempts": attempts}])
        self.counts["failures"] += 1

    def _drop_reason(self, choice: dict) -> str | None:
        if not choice["response"].strip():
            return "empty"
        if choice["finish_reason"] == "length" and not self.config.keep_truncated:
            return "truncated"
        if choice["response"] in self.seen_responses:
            return "duplicate"
        return None
