"""Target-generated training text: the target's own answers to chat prompts.

A draft is only as good as its match with the target *on the text it will
draft*, so distilling on the target's answers to chat requests (the way it will
be used) beats generic text. The answers are sampled with our own batched
engine (``SpeculativeGenerator`` with no draft: plain decoding, many prompts at
once) and stored as (prompt ids, answer ids) records in a JSON-lines file, one
line per record, appended after every batch and reused by a resumed or repeated
run (``datasets.load_dataset("json", data_files=...)`` reads it too). Keeping the
prompt apart lets training count the answer tokens only.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from tqdm.auto import tqdm

from specdistill.prompts import chat_prompt_ids, training_prompts
from specdistill.serve import SpeculativeGenerator

log = logging.getLogger(__name__)


Record = tuple[list[int], list[int]]  # (prompt ids, answer ids)


def generate_answers(target, tokenizer, max_tokens: int, cache: Path | None = None, prompts: list[str] | None = None,
                     max_new_tokens: int = 192, batch_size: int = 32, temperature: float = 0.8,
                     seed: int = 0, progress: bool = True) -> list[Record]:
    """(prompt ids, answer ids) records until ``max_tokens`` answer tokens. Prompts
    cycle with new seeds when there are fewer than needed. ``cache`` (a .jsonl file)
    keeps what was generated; a later call with the same file goes on from it."""
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    prompts = prompts or training_prompts(seed)
    records = load_records(cache)
    answer_tokens = sum(len(answer) for _, answer in records)
    if answer_tokens >= max_tokens:
        return records
    generator = SpeculativeGenerator(target, None, tokenizer=tokenizer)
    bar = tqdm(total=max_tokens, initial=min(answer_tokens, max_tokens), desc="target answers", unit="tok",
               disable=not progress)
    while answer_tokens < max_tokens:
        start = len(records)
        batch = [chat_prompt_ids(tokenizer, prompts[(start + i) % len(prompts)]) for i in range(batch_size)]
        outs = generator.generate_batch(batch, max_new_tokens=max_new_tokens, temperature=temperature,
                                        seed=seed + start, eos_token_id=tokenizer.eos_token_id)
        new = [(ids[0].tolist(), out.sequences[0, ids.shape[1]:].tolist()) for ids, out in zip(batch, outs)]
        _append(cache, new)
        records += new
        answer_tokens += sum(len(answer) for _, answer in new)
        bar.update(min(answer_tokens, max_tokens) - bar.n)
    bar.close()
    log.info("target answers: %d records, %d answer tokens", len(records), answer_tokens)
    return records


def answer_prompts(target, tokenizer, prompts: list[str], cache: Path | None = None, max_new_tokens: int = 128,
                   progress: bool = True) -> list[Record]:
    """One greedy answer of the target per prompt, in order (for held-out measurement);
    kept in ``cache`` and reused while it holds the same prompts."""
    records = load_records(cache)
    ids = [chat_prompt_ids(tokenizer, prompt) for prompt in prompts]
    if [prompt for prompt, _ in records] == [row[0].tolist() for row in ids]:
        return records
    if cache is not None and cache.exists():
        cache.unlink()  # other prompts (or a partial file): answer them afresh
    generator = SpeculativeGenerator(target, None, tokenizer=tokenizer)
    with tqdm(total=len(ids), desc="held-out answers", disable=not progress, leave=False) as bar:
        outs = generator.generate_batch(ids, max_new_tokens=max_new_tokens, eos_token_id=tokenizer.eos_token_id)
        bar.update(len(ids))
    records = [(row[0].tolist(), out.sequences[0, row.shape[1]:].tolist()) for row, out in zip(ids, outs)]
    _append(cache, records)
    return records


def load_records(path: Path | None) -> list[Record]:
    """Records from a JSON-lines cache; a last line cut short by a kill is dropped."""
    if path is None or not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            log.warning("dropping a partial line of %s (a killed run)", path)
            continue
        records.append((row["prompt_ids"], row["answer_ids"]))
    log.info("reusing %d target answers from %s", len(records), path)
    return records


def _append(path: Path | None, records: list[Record]) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():  # cut a partial last line (a kill mid-write) before appending after it
        data = path.read_bytes()
        if data and not data.endswith(b"\n"):
            path.write_bytes(data[: data.rfind(b"\n") + 1])
    lines = "".join(json.dumps({"prompt_ids": p, "answer_ids": a}) + "\n" for p, a in records)
    with path.open("a") as file:  # whole lines in one write: a kill leaves at most one partial line
        file.write(lines)
        file.flush()
