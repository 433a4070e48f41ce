"""Instruction prompts from local text, so a user can build thousands of prompts in
their own domain without downloads: ``specdistill make-prompts --source DIR``.

From Python files (``.py``), every documented function gives a "write this function"
prompt (its signature and docstring summary) and every documented class or function
an "explain this code" prompt (its source, up to ``max_lines``). From prose (``.md``,
``.rst``, ``.txt``), every paragraph of a useful length gives an "explain this
passage" prompt. With ``--source target`` the target writes them itself
(``specdistill.self_prompts``). Prompts are deduplicated, shuffled with ``seed``,
held-out prompts left out, and written as JSONL ``{"id", "prompt", "source"}``.
"""

from __future__ import annotations

import ast
import random
import re
import textwrap
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from specdistill.data import stdlib_files
from specdistill.generate_data import prompt_id
from specdistill.jsonl import append_rows
from specdistill.options import option
from specdistill.prompts import HELDOUT_PROMPTS
from specdistill.self_prompts import target_written_prompts

PROSE_SUFFIXES = {".md", ".rst", ".txt"}


@dataclass
class MakePromptsConfig:
    """Turn local text into instruction prompts for generate-data."""

    source: str = option("stdlib", "a folder or file of .py/.md/.rst/.txt text, stdlib (this Python's library), "
                                   "or target (the target writes them, few-shot from the built-in prompts)")
    writer: str = option("smollm2-135m", "with source target: the model that writes them (local dir or default)")
    out: str = option("runs/teacher-data/prompts.jsonl", "the JSONL file of prompts (replaced)")
    max_prompts: int = option(5000, "keep at most this many (a seeded random choice)")
    max_lines: int = option(30, "the longest code an 'explain this code' prompt quotes")
    seed: int = option(0, "seeds the choice and order")

    def __post_init__(self):
        if self.max_prompts < 1 or self.max_lines < 3:
            raise ValueError("max_prompts must be >= 1 and max_lines >= 3")


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


def run_make_prompts(config: MakePromptsConfig, progress: bool = True) -> dict:
    if config.source == "target":
        files = []
        found = target_written_prompts(config.max_prompts, config.seed, config.writer, progress=progress)
    else:
        files = _sources(config.source)
        found = collect_prompts(files, config.max_lines, config.seed, progress)
    if not found:
        raise ValueError(f"no prompts in {config.source!r}: it has no documented functions or classes and no "
                         "paragraphs of 40 to 250 words")
    chosen = found[: config.max_prompts]
    for row in chosen:
        row["id"] = prompt_id([{"role": "user", "content": row["prompt"]}])
    out = Path(config.out)
    out.unlink(missing_ok=True)
    append_rows(out, [{"id": r["id"], "prompt": r["prompt"], "source": r["source"]} for r in chosen])
    code = sum(r["source"].split(":")[0].endswith(".py") for r in chosen)
    written = sum(r["source"].startswith("target:") for r in chosen)
    return {"files": len(files), "found": len(found), "prompts": len(chosen), "from_code": code,
            "from_prose": len(chosen) - code - written, "target_written": written, "out": str(out)}
