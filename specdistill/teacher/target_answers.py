"""Target-generated training text: the target's own answers to chat prompts.

A draft is only as good as its match with the target *on the text it will
draft*, so distilling on the target's answers to chat requests (the way it will
be used) beats generic text. The answers are sampled with our own batched
engine (``SpeculativeGenerator`` with no draft: plain decoding, many prompts at
once, ``local_teacher.answer_batch``, as ``generate-data`` does) and stored as the
same teacher records, with their token ids, in a JSON-lines file: one line per
record, appended after every batch and reused by a resumed or repeated run
(``datasets.load_dataset("json", data_files=...)`` reads it too). Keeping the
prompt apart lets training count the answer tokens only.
"""

from __future__ import annotations

import logging
from pathlib import Path

from tqdm.auto import tqdm

from specdistill.data.builtin_prompts import training_prompts
from specdistill.data.jsonl import append_rows, read_rows
from specdistill.data.prompts import chat_ids, prompt_id
from specdistill.serve import SpeculativeGenerator
from specdistill.teacher.local import answer_batch
from specdistill.teacher.record_writer import make_record

log = logging.getLogger(__name__)


Record = tuple[list[int], list[int]]  # (prompt ids, answer ids)


def generate_answers(target, tokenizer, max_tokens: int, cache: Path | None = None, prompts: list[str] | None = None,
                     max_new_tokens: int = 192, batch_size: int = 32, temperature: float = 0.8,
                     seed: int = 0, progress: bool = True) -> list[Record]:
    """(prompt ids, answer ids) records until ``max_tokens`` answer tokens. Prompts
    cycle with new ids (hence new seeds) when there are fewer than needed. ``cache``
    (a .jsonl file of teacher records, as ``generate-data`` writes them) keeps what was
    generated; a later call with the same file goes on from it."""
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    prompts = prompts or training_prompts(seed)
    records = load_records(cache)
    answer_tokens = sum(len(answer) for _, answer in records)
    if answer_tokens >= max_tokens:
        return records
    generator = SpeculativeGenerator(target, None, tokenizer=tokenizer)
    teacher = getattr(target.config, "name_or_path", "") or "target"
    sampling = {"temperature": temperature, "top_p": 1.0, "max_tokens": max_new_tokens, "n": 1, "seed": seed}
    bar = tqdm(total=max_tokens, initial=min(answer_tokens, max_tokens), desc="target answers", unit="tok",
               disable=not progress)
    while answer_tokens < max_tokens:
        batch = [_cycled(prompts, len(records) + i) for i in range(batch_size)]
        answers = answer_batch(generator, tokenizer, batch, 1, max_new_tokens, temperature, 1.0, seed)
        rows = [make_record(prompt, 0, choices[0], teacher, sampling, usage)
                for prompt, (choices, usage) in zip(batch, answers)]
        append_rows(cache, rows)
        records += [(row["prompt_ids"], row["answer_ids"]) for row in rows]
        answer_tokens += sum(len(row["answer_ids"]) for row in rows)
        bar.update(min(answer_tokens, max_tokens) - bar.n)
    bar.close()
    log.info("target answers: %d records, %d answer tokens", len(records), answer_tokens)
    return records


def _cycled(prompts: list[str], index: int) -> dict:
    """The index-th prompt of an endless cycle; each round has its own id."""
    messages = [{"role": "user", "content": prompts[index % len(prompts)]}]
    round_ = index // len(prompts)
    return {"id": prompt_id(messages) + (f"-{round_}" if round_ else ""), "messages": messages}


def answer_prompts(target, tokenizer, prompts: list[str], cache: Path | None = None, max_new_tokens: int = 128,
                   progress: bool = True) -> list[Record]:
    """One greedy answer of the target per prompt, in order (for held-out measurement);
    kept in ``cache`` and reused while it holds the same prompts."""
    records = load_records(cache)
    batch = [{"id": str(i), "messages": [{"role": "user", "content": p}]} for i, p in enumerate(prompts)]
    if [prompt for prompt, _ in records] == [chat_ids(tokenizer, p["messages"]) for p in batch]:
        return records
    if cache is not None and cache.exists():
        cache.unlink()  # other prompts (or a partial file): answer them afresh
    generator = SpeculativeGenerator(target, None, tokenizer=tokenizer)
    with tqdm(total=len(batch), desc="held-out answers", disable=not progress, leave=False) as bar:
        answers = answer_batch(generator, tokenizer, batch, 1, max_new_tokens, 0.0, 1.0, 0)
        bar.update(len(batch))
    rows = [make_record(p, 0, choices[0], "target", {"temperature": 0.0}, usage)
            for p, (choices, usage) in zip(batch, answers)]
    append_rows(cache, rows)
    return [(row["prompt_ids"], row["answer_ids"]) for row in rows]


def load_records(path: Path | None) -> list[Record]:
    """(prompt ids, answer ids) of the teacher records in a JSON-lines file; a last line
    cut short by a kill is dropped."""
    rows = read_rows(path)
    if rows:
        log.info("reusing %d target answers from %s", len(rows), path)
    return [(row["prompt_ids"], row["answer_ids"]) for row in rows]
