"""``specdistill make-prompts``: instruction prompts from local text (``--source DIR`` or
``stdlib``, see ``specdistill.data.prompt_mining``), written by the target itself (``--source target``),
or a broad mix of tasks (``--source tasks --mix chat:2,translation:1,...``, see
``specdistill.data.task_prompts``), written as JSONL ``{"id", "prompt" or "turns", "source"[, "category"]}``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from specdistill.data.jsonl import append_rows
from specdistill.data.prompt_mining import _sources, collect_prompts
from specdistill.data.prompts import HELDOUT_PROMPTS, prompt_id
from specdistill.data.task_prompts import mixed_prompts, parse_mix
from specdistill.options import option
from specdistill.teacher.self_written_prompts import target_written_prompts


@dataclass
class MakePromptsConfig:
    """Turn local text into instruction prompts for generate-data."""

    source: str = option("stdlib", "a folder or file of .py/.md/.rst/.txt text, stdlib (this Python's library), "
                                   "target (the target writes them, few-shot from the built-in prompts), or tasks "
                                   "(a broad mix made from the standard library's documentation, or tasks:DIR "
                                   "from the .py files of DIR: see --mix)")
    mix: str = option("broad", "with source tasks: a named mix (broad = chat:1,everyday:2,translation:1,"
                               "summarization:1,qa:1,extraction:1,math:1,code:2,rag:1) or task:weight pairs of chat "
                               "(two turns about Python), everyday (two turns of everyday chat), translation, "
                               "summarization, qa, extraction, math, code, rag, sql (text-to-SQL; not in broad)")
    writer: str = option("smollm2-135m", "with source target: the model that writes them (local dir or default)")
    out: str = option("runs/teacher-data/prompts.jsonl", "the JSONL file of prompts (replaced)")
    max_prompts: int = option(5000, "keep at most this many (a seeded random choice)")
    max_lines: int = option(30, "the longest code an 'explain this code' prompt quotes")
    seed: int = option(0, "seeds the choice and order")

    def __post_init__(self):
        if self.max_prompts < 1 or self.max_lines < 3:
            raise ValueError("max_prompts must be >= 1 and max_lines >= 3")
        parse_mix(self.mix)


def run_make_prompts(config: MakePromptsConfig, progress: bool = True) -> dict:
    if config.source == "target":
        files = []
        found = target_written_prompts(config.max_prompts, config.seed, config.writer, progress=progress)
    elif config.source.split(":")[0] == "tasks":
        files = _sources(config.source.partition(":")[2] or "stdlib")
        found = mixed_prompts(files, parse_mix(config.mix), config.max_prompts, config.seed, progress,
                              exclude=set(HELDOUT_PROMPTS))
    else:
        files = _sources(config.source)
        found = collect_prompts(files, config.max_lines, config.seed, progress)
    if not found:
        raise ValueError(f"no prompts in {config.source!r}: it has no documented functions or classes and no "
                         "paragraphs of 40 to 250 words")
    chosen = found[: config.max_prompts]
    for row in chosen:
        row["id"] = prompt_id([{"role": "user", "content": turn} for turn in row.get("turns", [row.get("prompt")])])
    out = Path(config.out)
    out.unlink(missing_ok=True)
    append_rows(out, [{"id": r["id"]} | {key: r[key] for key in ("prompt", "turns", "source", "category") if key in r}
                      for r in chosen])
    code = sum(r["source"].split(":")[0].endswith(".py") for r in chosen)
    written = sum(r["source"].startswith("target:") for r in chosen)
    by_task = dict(Counter(r["category"] for r in chosen if "category" in r))
    tasks = sum(by_task.values())
    return {"files": len(files), "found": len(found), "prompts": len(chosen), "from_code": code,
            "from_prose": len(chosen) - code - written - tasks, "target_written": written, "by_task": by_task,
            "out": str(out)}
