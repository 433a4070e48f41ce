"""Instruction prompts from local text, so a user can build thousands of prompts in
their own domain without downloads: ``specdistill make-prompts --source DIR``.

From Python files (``.py``), every documented function gives a "write this function"
prompt (its signature and docstring summary) and every documented class or function
an "explain this code" prompt (its source, up to ``max_lines``). From prose (``.md``,
``.rst``, ``.txt``), every paragraph of a useful length gives an "explain this
passage" prompt. With ``--source target`` the target writes them itself
(``specdistill.teacher.self_written_prompts``). Prompts are deduplicated, shuffled with ``seed``,
held-out prompts left out, and written as JSONL ``{"id", "prompt", "source"}``.
"""

from __future__ import annotations

import ast
import random
import re
import textwrap
from pathlib import Path

from tqdm.auto import tqdm

from specdistill.data.corpora import stdlib_files
from specdistill.data.prompts import HELDOUT_PROMPTS

PROSE_SUFFIXES = {".md", ".rst", ".txt"}


def python_prompts(text: str, max_lines: int) -> list[tuple[str, int]]:
    """(prompt, line) pairs from the documented functions and classes of Python source."""
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):
        return []
    lines, prompts = text.splitlines(), []
    for node in ast.walk(tree):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            continue
        doc = ast.get_docstring(node)
        if not doc or node.name.startswith("_"):
            continue
        summary = doc.strip().split("\n\n")[0].replace("\n", " ")
        if isinstance(node, ast.ClassDef):
            kind = "class"
        else:
            kind = "function"
            signature = f"{node.name}({ast.unparse(node.args)})"
            prompts.append((f"Write a Python function `{signature}`: {summary}", node.lineno))
        source = lines[node.lineno - 1: node.end_lineno]
        if 3 <= len(source) <= max_lines:
            code = textwrap.dedent("\n".join(source))
            prompts.append((f"Explain what this Python {kind} does, step by step:\n\n```python\n{code}\n```",
                            node.lineno))
    return prompts


def prose_prompts(text: str) -> list[tuple[str, int]]:
    """(prompt, line) pairs from the paragraphs of prose (markup lines left out)."""
    prompts, line = [], 1
    for block in re.split(r"\n\s*\n", text):
        words = block.split()
        start, line = line, line + block.count("\n") + 2
        if not 40 <= len(words) <= 250 or block.lstrip().startswith(("..", "```", "|", "<", "{")):
            continue
        passage = " ".join(words)
        prompts.append((f"Explain this passage in simple terms, with a short example:\n\n{passage}", start))
    return prompts


def _sources(source: str) -> list[Path]:
    if source == "stdlib":
        return stdlib_files()
    path = Path(source).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"source {source!r} is neither stdlib nor an existing file or folder")
    files = [path] if path.is_file() else sorted(
        p for p in path.rglob("*") if p.is_file() and (p.suffix == ".py" or p.suffix in PROSE_SUFFIXES))
    if not files:
        raise ValueError(f"source {source!r} holds no .py, .md, .rst or .txt files")
    return files


def collect_prompts(files: list[Path], max_lines: int, seed: int, progress: bool = False) -> list[dict]:
    """Every distinct prompt of the files ({prompt, source}), shuffled with ``seed``, none held out."""
    found, seen = [], set(HELDOUT_PROMPTS)
    for file in tqdm(files, desc="reading", unit="file", disable=not progress):
        text = file.read_text(encoding="utf-8", errors="replace")
        pairs = python_prompts(text, max_lines) if file.suffix == ".py" else prose_prompts(text)
        for prompt, line in pairs:
            if prompt not in seen:
                seen.add(prompt)
                found.append({"prompt": prompt, "source": f"{file}:{line}"})
    random.Random(seed).shuffle(found)
    return found


def stdlib_code_prompts(seed: int = 0, limit: int = 2200) -> list[str]:
    """``limit`` prompts made from this Python's standard library (``make-prompts --source stdlib``)."""
    return [row["prompt"] for row in collect_prompts(stdlib_files(), 30, seed)[:limit]]
