"""Prompt files, chat formatting and the held-out prompts.

``HELDOUT_PROMPTS`` are only ever used to measure drafts, never to train them. ``prompt_id`` names a
prompt by its messages, so that records of the same prompt match across files.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import torch

HELDOUT_PROMPTS = [
    "Write a Python function that checks whether a string is a palindrome.",
    "Explain the difference between a list and a tuple in Python.",
    "Write a Python function that returns the n-th Fibonacci number.",
    "How do I read a CSV file in Python and print each row?",
    "Write a Python class for a simple stack with push, pop and peek.",
    "What does the `with` statement do in Python? Give an example.",
    "Write a function that counts the words in a text file.",
    "Explain what a Python decorator is, with a short example.",
    "Write a Python function to merge two sorted lists.",
    "How can I remove duplicates from a list while keeping the order?",
    "Write a Python script that prints the current date and time.",
    "Explain list comprehensions in Python with two examples.",
]


def chat_ids(tokenizer, messages: list[dict]) -> list[int]:
    """Token ids of a chat (a list of {role, content}) ready for the assistant's answer:
    the tokenizer's chat template, or the contents one per line when it has none."""
    if getattr(tokenizer, "chat_template", None):
        return list(tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)["input_ids"])
    return tokenizer("\n".join(m["content"] for m in messages))["input_ids"]


def chat_prompt_ids(tokenizer, prompt: str):
    """Token ids [1, L] of a single-turn chat prompt, ready for the assistant's answer."""
    return torch.tensor([chat_ids(tokenizer, [{"role": "user", "content": prompt}])])


def read_prompt_records(path: str) -> list[dict]:
    """Prompt records from a file: JSONL (``.jsonl``) with a ``prompt`` string or a chat
    ``messages`` list per line and an optional ``id``, or one prompt per line of text."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"prompt file {path!r} does not exist")
    lines = [line for line in file.read_text().splitlines() if line.strip()]
    if file.suffix != ".jsonl":
        records = [{"prompt": line.strip()} for line in lines]
    else:
        records = []
        for number, line in enumerate(lines, 1):
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{number} is not JSON: {err}") from err
            chat = isinstance(record, dict) and isinstance(record.get("messages"), list) and record["messages"]
            if not chat and not (isinstance(record, dict) and isinstance(record.get("prompt"), str)):
                raise ValueError(f"{path}:{number} needs a string field 'prompt' or a list 'messages'")
            records.append(record)
    if not records:
        raise ValueError(f"prompt file {path!r} holds no prompts")
    return records


def read_prompts(path: str) -> list[str]:
    """The prompt texts of a prompt file (a chat record gives its last user message)."""
    return [r["prompt"] if "prompt" in r else r["messages"][-1]["content"] for r in read_prompt_records(path)]

log = logging.getLogger(__name__)


def prompt_id(messages: list[dict]) -> str:
    """A stable id from the prompt's content: the same prompt is the same record across runs."""
    return hashlib.sha1(json.dumps(messages, sort_keys=True).encode()).hexdigest()[:16]
