"""Target-generated training text: the target's own answers to chat prompts.

A draft is only as good as its match with the target *on the text it will
draft*, so distilling on the target's answers to chat requests (the way it will
be used) beats generic text. The answers are sampled with our own batched
engine (``SpeculativeGenerator`` with no draft: plain decoding, many prompts at
once), saved after every batch, and reused by a resumed or repeated run.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from tqdm.auto import tqdm

from specdistill.prompts import chat_prompt_ids, training_prompts
from specdistill.serve import SpeculativeGenerator

log = logging.getLogger(__name__)


def generate_answers(target, tokenizer, max_tokens: int, cache: Path | None = None, prompts: list[str] | None = None,
                     max_new_tokens: int = 192, batch_size: int = 32, temperature: float = 0.8,
                     seed: int = 0, progress: bool = True) -> list[list[int]]:
    """Token sequences (chat prompt + sampled answer) until ``max_tokens`` answer tokens.
    Prompts cycle with new seeds when there are fewer than needed. ``cache`` (a .pt
    file) keeps what was generated; a later call with the same file goes on from it."""
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    prompts = prompts or training_prompts(seed)
    sequences, answer_tokens = _load(cache)
    if answer_tokens >= max_tokens:
        return sequences
    generator = SpeculativeGenerator(target, None, tokenizer=tokenizer)
    bar = tqdm(total=max_tokens, initial=min(answer_tokens, max_tokens), desc="target answers", unit="tok",
               disable=not progress)
    while answer_tokens < max_tokens:
        start = len(sequences)
        batch = [chat_prompt_ids(tokenizer, prompts[(start + i) % len(prompts)]) for i in range(batch_size)]
        outs = generator.generate_batch(batch, max_new_tokens=max_new_tokens, temperature=temperature,
                                        seed=seed + start, eos_token_id=tokenizer.eos_token_id)
        for ids, out in zip(batch, outs):
            sequences.append(out.sequences[0].tolist())
            answer_tokens += out.sequences.shape[1] - ids.shape[1]
        bar.update(min(answer_tokens, max_tokens) - bar.n)
        _save(cache, sequences, answer_tokens)
    bar.close()
    log.info("target answers: %d sequences, %d answer tokens", len(sequences), answer_tokens)
    return sequences


def sequence_chunks(sequences: list[list[int]], seq_len: int) -> torch.Tensor:  # [num_chunks, seq_len]
    """The sequences back to back, cut into chunks of ``seq_len`` tokens."""
    ids = [token for sequence in sequences for token in sequence]
    if len(ids) < seq_len:
        raise ValueError(f"{len(ids)} generated tokens are fewer than one chunk of seq_len={seq_len}; "
                         "generate more (generate_tokens) or lower seq_len")
    n_chunks = len(ids) // seq_len
    return torch.tensor(ids[: n_chunks * seq_len]).view(n_chunks, seq_len)


def _load(cache: Path | None) -> tuple[list[list[int]], int]:
    if cache is None or not cache.exists():
        return [], 0
    saved = torch.load(cache)
    log.info("reusing %d target answers from %s", len(saved["sequences"]), cache)
    return saved["sequences"], saved["answer_tokens"]


def _save(cache: Path | None, sequences: list[list[int]], answer_tokens: int) -> None:
    if cache is None:
        return
    cache.parent.mkdir(parents=True, exist_ok=True)
    partial = cache.with_suffix(".partial")
    torch.save({"sequences": sequences, "answer_tokens": answer_tokens}, partial)
    os.replace(partial, cache)  # atomic: a killed run never leaves half a file
