"""A broad training mix of prompts, built offline: ``specdistill make-prompts --source tasks``.

A draft trained on one kind of request drafts poorly on the others, so the mix covers what users
send. Every task is made from text on this machine, the Python standard library (PSF licence), or
from templates written for this project; the target then answers each prompt as it would a user:

    chat            two turns about Python: a request, then a follow-up about the model's own first answer
    everyday        two turns of everyday chat: advice, explanations, comparisons, ideas, short writing
                    (``specdistill.data.everyday_prompts``: templates of our own, no documents)
    translation     a sentence of the library's documentation, into one of several languages; in two of
                    five, a second turn asks for the model's own translation back into English, so the
                    mix also translates out of those languages (text the target writes itself)
    summarization   a module's documentation (about 700 to 2,000 words), summarized
    qa              a question about one function of such a document, answered from it
    extraction      the functions, parameters or values of a short document, as a list or JSON
    math            a word problem with a step-by-step answer (``specdistill.data.math_problems``)
    code            write or explain a function (``specdistill.data.prompt_mining``)
    rag             a question over four passages of different modules, one of them relevant
    sql             a schema of two or three tables and a question, answered as a query
                    (``specdistill.data.sql_prompts``: templates of our own; not in the broad mix)

Held-out prompts are left out. A measured set must come from other sources
(``bench/prompts/broad-heldout.jsonl`` uses installed packages' READMEs and hand-written requests).
"""

from __future__ import annotations

import ast
import random
import re
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from specdistill.data.everyday_prompts import everyday_prompts
from specdistill.data.math_problems import math_problems
from specdistill.data.sql_prompts import sql_prompts

TASKS = ("chat", "everyday", "translation", "summarization", "qa", "extraction", "math", "code", "rag", "sql")
# Named mixes (``make-prompts --mix broad``): task weights, normalized to shares. ``broad`` weighs
# chat (Python and everyday) and code double (most of what users send), the rest once each.
MIXES = {"broad": "chat:1,everyday:2,translation:1,summarization:1,qa:1,extraction:1,math:1,code:2,rag:1"}
LANGUAGES = ("French", "German", "Spanish", "Italian", "Portuguese", "Dutch")
FOLLOW_UPS = (
    "Now make your answer shorter: three sentences at most.",
    "Give a concrete example of what you just described.",
    "Explain the first point of your answer in more detail.",
    "Rewrite your answer for someone who has never programmed.",
    "What are the limits or pitfalls of the approach in your answer?",
    "Turn your answer into a numbered list of steps.",
)
SUMMARY_ASKS = ("Summarize the following documentation in one paragraph.",
                "Write a short summary of this module's documentation for a newcomer.",
                "Summarize the text below in five bullet points.")
EXTRACTION_ASKS = ("List every function or class named in this text, each with a one-line description, as JSON.",
                   "Extract the names of the functions below and their parameters as a JSON object.",
                   "Make a table of the functions in this text: name, what it takes, what it returns.")


@dataclass
class Entry:
    name: str  # a public function or class of the module
    signature: str
    doc: str  # its docstring


@dataclass
class ModuleDoc:
    module: str
    doc: str  # the module's docstring
    entries: list[Entry]

    def text(self, max_words: int) -> str:
        """The module's documentation, entry by entry, up to about ``max_words`` words."""
        parts, words = [f"Module {self.module}\n\n{self.doc}".strip()], len(self.doc.split())
        for entry in self.entries:
            block = f"{entry.signature}\n{entry.doc}"
            if words + len(block.split()) > max_words:
                break
            parts.append(block)
            words += len(block.split())
        return "\n\n".join(parts)

    def words(self) -> int:
        return len(self.doc.split()) + sum(len(e.doc.split()) + 1 for e in self.entries)


def module_docs(files: list[Path], progress: bool = False) -> list[ModuleDoc]:
    """The documentation of every module with a docstring and documented public entries."""
    docs = []
    for file in tqdm(files, desc="reading", unit="file", disable=not progress):
        try:
            tree = ast.parse(file.read_text(encoding="utf-8", errors="replace"))
        except (SyntaxError, ValueError):
            continue
        entries = [Entry(node.name, _signature(node), ast.get_docstring(node).strip())
                   for node in tree.body if isinstance(node, (ast.FunctionDef, ast.ClassDef))
                   and not node.name.startswith("_") and ast.get_docstring(node)]
        module_doc = (ast.get_docstring(tree) or "").strip()
        if module_doc and entries:
            docs.append(ModuleDoc(_module_name(file), module_doc, entries))
    return docs


def _signature(node) -> str:
    return f"class {node.name}" if isinstance(node, ast.ClassDef) else f"def {node.name}({ast.unparse(node.args)})"


def _module_name(file: Path) -> str:
    parts = file.with_suffix("").parts
    return ".".join(parts[parts.index("lib") + 2:] if "lib" in parts else parts[-1:]).removesuffix(".__init__")


def _sentences(doc: str) -> list[str]:
    """Prose sentences of 8 to 30 words (no code, no markup)."""
    text = " ".join(doc.split())
    found = re.split(r"(?<=[.!?])\s+(?=[A-Z])", text)
    return [s for s in found if 8 <= len(s.split()) <= 30 and s[-1] in ".!?" and not re.search(r"[{}<>=_`|\\]|>>>", s)]


def task_prompts(task: str, docs: list[ModuleDoc], count: int, rng: random.Random, max_lines: int = 30) -> list[dict]:
    """Up to ``count`` prompt records ({prompt or turns, source, category}) of one task."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose from {', '.join(TASKS)}")
    if task == "math":
        return [r | {"category": "math"} for r in math_problems(count, rng.randrange(2**31))]
    if task == "everyday":
        return [r | {"category": "everyday", "source": "specdistill templates"} for r in everyday_prompts(count, rng)]
    if task == "sql":
        return [r | {"category": "sql"} for r in sql_prompts(count, rng)]
    rows = []
    for _ in range(count * 4):
        if len(rows) >= count:
            break
        doc = rng.choice(docs)
        row = _MAKERS[task](doc, docs, rng, max_lines)
        if row is not None:
            rows.append(row | {"category": task, "source": f"stdlib {doc.module}"})
    return rows


def _code(doc: ModuleDoc, docs, rng, max_lines: int) -> dict | None:
    entry = rng.choice(doc.entries)
    summary = " ".join(entry.doc.split("\n\n")[0].split())
    if entry.signature.startswith("class") or rng.random() < 0.3:
        return {"prompt": f"Write a short Python program that uses `{doc.module}.{entry.name}` ({summary})"}
    return {"prompt": f"Write a Python function `{entry.signature[4:]}`: {summary}"}


def _chat(doc: ModuleDoc, docs, rng, max_lines: int) -> dict | None:
    entry = rng.choice(doc.entries)
    first = rng.choice((f"What is `{entry.name}` in Python's `{doc.module}` module for, and how do I use it?",
                        f"Explain Python's `{doc.module}` module to me with a small example.",
                        f"When should I use `{doc.module}.{entry.name}`? Give a short example."))
    return {"turns": [first, rng.choice(FOLLOW_UPS)]}


def _translation(doc: ModuleDoc, docs, rng, max_lines: int) -> dict | None:
    sentences = _sentences(doc.doc) + [s for e in doc.entries for s in _sentences(e.doc)]
    if not sentences:
        return None
    language = rng.choice(LANGUAGES)
    ask = f"Translate into {language}: {rng.choice(sentences)}"
    if rng.random() < 0.4:  # out of the language: the second turn translates the model's own text back
        return {"turns": [ask, f"Now translate your {language} text back into English."]}
    return {"prompt": ask}


def _long_document(doc: ModuleDoc, rng) -> str | None:
    if doc.words() < 500:
        return None
    return doc.text(rng.randint(700, 2000))


def _summarization(doc: ModuleDoc, docs, rng, max_lines: int) -> dict | None:
    text = _long_document(doc, rng)
    return None if text is None else {"prompt": f"{rng.choice(SUMMARY_ASKS)}\n\n{text}"}


def _qa(doc: ModuleDoc, docs, rng, max_lines: int) -> dict | None:
    text = _long_document(doc, rng)
    if text is None:
        return None
    named = [e for e in doc.entries if e.signature in text]
    if not named:  # the module's own docstring filled the document
        return None
    entry = rng.choice(named)
    question = rng.choice((f"According to the documentation above, what does `{entry.name}` do?",
                           f"Based on the text, when would I use `{entry.name}`, and what does it take?",
                           f"What does the documentation above say about `{entry.name}`? Answer briefly."))
    return {"prompt": f"{text}\n\n{question}"}


def _extraction(doc: ModuleDoc, docs, rng, max_lines: int) -> dict | None:
    text = doc.text(rng.randint(150, 450))
    if text.count("\n\n") < 2:
        return None
    return {"prompt": f"{rng.choice(EXTRACTION_ASKS)}\n\n{text}"}


def _rag(doc: ModuleDoc, docs, rng, max_lines: int) -> dict | None:
    entry = rng.choice(doc.entries)
    others = [rng.choice(other.entries) for other in rng.sample(docs, 3) if other is not doc]
    passages = [e for e in [entry, *others] if 15 <= len(e.doc.split()) <= 200]
    if entry not in passages or len(passages) < 3:
        return None
    rng.shuffle(passages)
    context = "\n\n".join(f"[{i}] {e.signature}\n{e.doc}" for i, e in enumerate(passages, 1))
    return {"prompt": f"Answer using only the passages below, and say which passage you used.\n\n{context}\n\n"
                      f"Question: what does `{entry.name}` do, and how is it called?"}


_MAKERS = {"chat": _chat, "translation": _translation, "summarization": _summarization, "qa": _qa,
           "extraction": _extraction, "code": _code, "rag": _rag}


def parse_mix(spec: str) -> dict[str, float]:
    """``"chat:3,translation:1,..."`` or a named mix (``MIXES``) as {task: share}, the shares summing to 1."""
    spec, mix = MIXES.get(spec, spec), {}
    for part in spec.split(","):
        task, _, weight = part.strip().partition(":")
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r} in the mix {spec!r}; choose from {', '.join(TASKS)}")
        try:
            mix[task] = float(weight or 1)
        except ValueError:
            raise ValueError(f"the weight of {task!r} in {spec!r} is not a number") from None
        if mix[task] <= 0:
            raise ValueError(f"the weight of {task!r} must be > 0, got {mix[task]}")
    total = sum(mix.values())
    return {task: weight / total for task, weight in mix.items()}


def mixed_prompts(files: list[Path], mix: dict[str, float], count: int, seed: int, progress: bool = False,
                  exclude: set[str] = frozenset()) -> list[dict]:
    """About ``count`` prompt records in the ``mix``'s proportions, shuffled with ``seed``."""
    docs = module_docs(files, progress)
    if not docs:
        raise ValueError("no documented modules to make task prompts from")
    rng, rows, seen = random.Random(seed), [], set(exclude)
    for task, share in mix.items():
        for row in task_prompts(task, docs, round(count * share), rng):
            key = row.get("prompt") or "\n".join(row["turns"])
            if key not in seen:
                seen.add(key)
                rows.append(row)
    rng.shuffle(rows)
    return rows

