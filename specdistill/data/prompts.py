"""Prompt files, chat formatting and the held-out prompts.

``HELDOUT_PROMPTS`` are only ever used to measure drafts, never to train them. ``prompt_id`` names a
prompt by its messages, so that records of the same prompt match across files.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
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


def _file_records(path: str) -> list[tuple[str, dict]]:
    """(where, record) per prompt of a file: JSONL (``.jsonl``), one object per line, or one prompt
    per line of text (``{"prompt": line}``)."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"prompt file {path!r} does not exist")
    lines = [(f"{path}:{number}", line) for number, line in enumerate(file.read_text().splitlines(), 1)
             if line.strip()]
    if not lines:
        raise ValueError(f"prompt file {path!r} holds no prompts")
    if file.suffix != ".jsonl":
        return [(where, {"prompt": line.strip()}) for where, line in lines]
    records = []
    for where, line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{where} is not JSON: {err}") from err
        records.append((where, record if isinstance(record, dict) else {}))
    return records


def _single_turn(record: dict) -> bool:
    chat = isinstance(record.get("messages"), list) and record["messages"]
    return bool(chat) or isinstance(record.get("prompt"), str)


def _checked_records(path: str) -> list[tuple[str, dict]]:
    """(where, record) per prompt of a file, each holding a ``prompt``, ``messages`` or ``turns``."""
    records = _file_records(path)
    for where, record in records:
        turns = record.get("turns")
        if "turns" in record and not (isinstance(turns, list) and turns and all(isinstance(t, str) and t
                                                                               for t in turns)):
            raise ValueError(f"{where}: 'turns' must be a non-empty list of non-empty strings")
        if "turns" not in record and not _single_turn(record):
            raise ValueError(f"{where} needs a string field 'prompt', a list 'messages' or a list 'turns'")
    return records


def read_prompt_records(path: str) -> list[dict]:
    """Prompt records from a file: JSONL (``.jsonl``) with a ``prompt`` string, a chat ``messages``
    list or ``turns`` (user turns, each asked after the answer to the one before) per line and an
    optional ``id``, or one prompt per line of text."""
    return [record for _, record in _checked_records(path)]


def read_prompts(path: str) -> list[str]:
    """The prompt texts of a prompt file (a chat record gives its last user message, a multi-turn
    record its first turn)."""
    return [r["prompt"] if "prompt" in r else r["turns"][0] if "turns" in r else r["messages"][-1]["content"]
            for r in read_prompt_records(path)]


@dataclass(frozen=True)
class Conversation:
    """A measured request: the user's ``turns``, each asked after the model's own answer to the one
    before (MT-bench style), following the ``context`` messages (a system prompt, earlier turns)."""

    turns: tuple[str, ...]
    context: tuple[dict, ...] = ()
    category: str = ""

    @classmethod
    def of(cls, prompt: str | Conversation) -> Conversation:
        return prompt if isinstance(prompt, Conversation) else cls((prompt,))


def read_conversations(path: str) -> list[Conversation]:
    """The requests of a prompt file. Each JSONL line holds a ``prompt`` string, a chat ``messages``
    list (its last message is the user's turn, the ones before it the context), or ``turns``, a list
    of user turns; and an optional ``category``. A text file holds one prompt per line."""
    conversations = []
    for where, record in _checked_records(path):
        context, category = (), record.get("category", "")
        if "turns" in record:
            turns = record["turns"]
        elif "prompt" in record:
            turns = [record["prompt"]]
        else:
            *context, last = record["messages"]
            if last.get("role") != "user":
                raise ValueError(f"{where}: the last message must be the user's, got {last.get('role')!r}")
            turns = [last["content"]]
        if not isinstance(category, str):
            raise ValueError(f"{where}: 'category' must be a string, got {category!r}")
        conversations.append(Conversation(tuple(turns), tuple(context), category))
    return conversations


def by_category(conversations: list[Conversation]) -> dict[str, list[Conversation]]:
    """The conversations grouped by category, in the order each category first appears."""
    groups: dict[str, list[Conversation]] = {}
    for conversation in conversations:
        groups.setdefault(conversation.category or "uncategorized", []).append(conversation)
    return groups


log = logging.getLogger(__name__)


def prompt_id(messages: list[dict]) -> str:
    """A stable id from the prompt's content: the same prompt is the same record across runs."""
    return hashlib.sha1(json.dumps(messages, sort_keys=True).encode()).hexdigest()[:16]
