"""Teacher data for black-box distillation: (prompt, response) records from any
OpenAI-compatible endpoint, or from a local teacher on our engine.

``specdistill generate-data`` answers every prompt of ``--prompts`` (``n`` samples
each) and appends one JSON line per response to ``--out`` as it arrives, keyed by a
stable prompt id. It is resumable and exactly-once: a rerun skips the prompts that
have their records (kept or dropped); a kill at any moment loses at most the requests
in flight, never writes half a record (lines are whole, one write per prompt) and
never a duplicate. Prompts that still fail after the client's retries go to
``<out>.failures.jsonl`` with the error; the next run tries them again.

Responses that are empty, cut at ``max_tokens`` (``finish_reason == "length"``,
unless ``--keep-truncated``) or exact duplicates of an earlier one are not kept for
training: they go to ``<out>.dropped.jsonl`` with the reason, and are counted.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from specdistill.jsonl import append_rows, read_rows
from specdistill.options import option
from specdistill.prompts import builtin_prompt_set, read_prompt_records

log = logging.getLogger(__name__)

SYSTEM_PRESETS = {
    "none": None,
    "plain": "You are a helpful assistant. Answer clearly and correctly.",
    # Orca-style: answers that explain themselves teach a student more than bare answers.
    "explain": ("You are a helpful assistant. Think through the task step by step and explain your reasoning "
                "as you go, then give the final answer. For code, explain what each part does."),
}


@dataclass
class GenerateConfig:
    """Collect (prompt, response) records from a teacher for black-box distillation."""

    prompts: str = option("builtin", "a JSONL ('prompt' or 'messages', optional 'id') or text file, or builtin, "
                                     "builtin:python, builtin:stdlib (the project's prompt sets)")
    out: str = option("runs/teacher-data/responses.jsonl", "the JSONL file records are appended to")
    endpoint: str = option("", "an OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1 (empty = local teacher)")
    model: str = option("", "the model name the endpoint serves")
    api_key: str = option("", "the endpoint's API key (default: $OPENAI_API_KEY, else 'EMPTY')")
    api: str = option("chat", "chat (/chat/completions) or completions (/completions, the prompt as raw text)")
    teacher: str = option("smollm2-135m", "without an endpoint: a local HF model directory or the embedded default")
    system_preset: str = option("none", "system prompt: none, plain, or explain (Orca-style step-by-step answers)")
    n: int = option(1, "responses per prompt")
    temperature: float = option(0.7, "sampling temperature (0 = greedy)")
    top_p: float = option(1.0, "nucleus sampling mass")
    max_tokens: int = option(256, "the most tokens per response")
    seed: int = option(0, "sampling seed (the endpoint may ignore it)")
    concurrency: int = option(8, "requests in flight at once (endpoint)")
    max_requests: int = option(0, "stop after this many prompts are sent (0 = all)")
    timeout: float = option(60.0, "seconds per request attempt before it is retried")
    max_retries: int = option(4, "retries per request on 429, 5xx, timeouts and dropped connections")
    batch_size: int = option(16, "prompts decoded together by the local teacher")
    keep_truncated: bool = option(False, "keep responses cut at max_tokens (finish_reason 'length')")

    def __post_init__(self):
        if self.system_preset not in SYSTEM_PRESETS:
            raise ValueError(f"system_preset must be one of {', '.join(SYSTEM_PRESETS)}, got {self.system_preset!r}")
        if self.api not in ("chat", "completions"):
            raise ValueError(f"api must be chat or completions, got {self.api!r}")
        if self.endpoint and not self.model:
            raise ValueError("an endpoint needs --model (the model name it serves)")
        for name in ("n", "max_tokens", "concurrency", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_requests < 0 or self.max_retries < 0 or self.timeout <= 0:
            raise ValueError("max_requests and max_retries must be >= 0 and timeout > 0")

    def sampling(self) -> dict:
        return {"temperature": self.temperature, "top_p": self.top_p, "max_tokens": self.max_tokens, "n": self.n,
                "seed": self.seed}


def prompt_id(messages: list[dict]) -> str:
    """A stable id from the prompt's content: the same prompt is the same record across runs."""
    return hashlib.sha1(json.dumps(messages, sort_keys=True).encode()).hexdigest()[:16]


def make_record(prompt: dict, sample: int, choice: dict, teacher: str, sampling: dict, usage: dict) -> dict:
    """One teacher record: the prompt's id and messages, one response (with its finish
    reason, and reasoning or token ids when there are any), who wrote it and how."""
    return {"id": prompt["id"], "sample": sample, "messages": prompt["messages"], **choice, "teacher": teacher,
            "sampling": sampling, "usage": usage}


def load_prompts(config: GenerateConfig) -> list[dict]:
    """[{id, messages}] with the system preset applied; ids are unique."""
    if config.prompts.startswith("builtin"):
        raw = [{"prompt": p} for p in builtin_prompt_set(config.prompts)]
    else:
        raw = read_prompt_records(config.prompts)
    system = SYSTEM_PRESETS[config.system_preset]
    prompts, seen = [], set()
    for row in raw:
        messages = row.get("messages") or [{"role": "user", "content": row["prompt"]}]
        if system and messages[0].get("role") != "system":
            messages = [{"role": "system", "content": system}, *messages]
        pid = str(row.get("id") or prompt_id(messages))
        if pid not in seen:
            seen.add(pid)
            prompts.append({"id": pid, "messages": messages})
    return prompts


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
        self.failures.unlink(missing_ok=True)  # this run retries them; what fails again is written anew

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


def run_generate_data(config: GenerateConfig, progress: bool = True) -> dict:
    prompts = load_prompts(config)  # the prompt file's errors come before any connection or model load
    start = time.perf_counter()
    if config.endpoint:
        from specdistill.teacher_client import generate_from_endpoint

        writer, requests = generate_from_endpoint(config, prompts, progress)
    else:
        from specdistill.local_teacher import generate_locally

        writer, requests = generate_locally(config, prompts, progress)
    seconds = time.perf_counter() - start
    summary = {"prompts": len(prompts), "answered_before": writer.already, **writer.counts, "requests": requests,
               "seconds": round(seconds, 1), "requests_per_s": round(requests / max(seconds, 1e-9), 2),
               "out": str(writer.out)}
    if writer.counts["failures"]:
        summary["failures_file"] = str(writer.failures)
    return summary
