"""A local teacher: the target answers prompts in batches on our own engine, into the
same records an endpoint gives (plus the exact token ids, so training needs no
re-tokenizing). ``train --data target`` makes its answers this way too."""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from specdistill.data.prompts import chat_ids
from specdistill.models import load_target
from specdistill.models.loading import batch_dtype
from specdistill.serve import SpeculativeGenerator
from specdistill.teacher.generate_config import GenerateConfig
from specdistill.teacher.record_writer import RecordWriter

CHUNK_BATCHES = 4  # batches of prompts that share an engine in ``generate_locally``
FINISH_REASONS = {"eos": "stop", "stop": "stop", "length": "length"}  # ours -> OpenAI's names


@torch.inference_mode()
def answer_batch(generator: SpeculativeGenerator, tokenizer, prompts: list[dict], n: int, max_new_tokens: int,
                 temperature: float, top_p: float, seed: int,
                 max_batch_size: int | None = None) -> list[tuple[list[dict], dict]]:
    """``n`` answers to each prompt ({id, messages}), decoded together: per prompt, its
    choices ({response, finish_reason, prompt_ids, answer_ids}) and token usage. With
    ``max_batch_size``, at most that many rows decode at once and a finished row's slot goes to
    the next waiting one (continuous batching: no slot idles until the batch's longest answer
    ends). A row's seed comes from its prompt id, so answers do not depend on how prompts are batched."""
    engine = generator.engine(max_batch_size=max_batch_size or len(prompts) * n)
    eos = tokenizer.eos_token_id
    rows = []
    for prompt in prompts:
        ids = chat_ids(tokenizer, prompt["messages"])
        base = int.from_bytes(prompt["id"].encode()[-8:], "little") % 2**31 + seed
        rows.append((ids, [engine.add(torch.tensor(ids), max_new_tokens, temperature, top_p, 0, eos, base + j)
                           for j in range(n)]))
    while engine.has_work():
        for request, _ in engine.step():
            if request.finish_reason == "error":
                raise RuntimeError(f"the local teacher failed on a prompt: {request.error}")
    results = []
    for ids, requests in rows:
        choices = []
        for request in requests:
            answer = request.tokens[len(ids):]
            choices.append({"response": tokenizer.decode(answer, skip_special_tokens=True),
                            "finish_reason": FINISH_REASONS.get(request.finish_reason, request.finish_reason),
                            "prompt_ids": ids, "answer_ids": answer})
        usage = {"prompt_tokens": len(ids), "completion_tokens": sum(len(c["answer_ids"]) for c in choices)}
        results.append((choices, usage))
    return results


def _length(prompt: dict) -> int:
    return sum(len(message["content"]) for message in prompt["messages"])


def generate_locally(config: GenerateConfig, prompts: list[dict], progress: bool) -> tuple[RecordWriter, int]:
    target, tokenizer = load_target(config.teacher, dtype=batch_dtype())  # bf16 where native, else fp32 (faster)
    writer = RecordWriter(config, getattr(target.config, "name_or_path", config.teacher) or config.teacher)
    # Similar lengths decode together: a batch's prefill pads to its longest prompt, so one long
    # document among short questions would cost the whole batch its length.
    todo = sorted(writer.todo(prompts), key=_length)
    generator = SpeculativeGenerator(target, None, tokenizer=tokenizer)
    # Chunks of several batches share one engine, so rows that finish early hand their slots on;
    # each chunk's records are written when it ends (a killed run loses one chunk at most).
    chunk = config.batch_size * CHUNK_BATCHES
    with tqdm(total=len(todo), desc="teacher answers", unit="prompt", disable=not progress) as bar:
        for start in range(0, len(todo), chunk):
            batch = todo[start: start + chunk]
            answers = answer_batch(generator, tokenizer, batch, config.n, config.max_tokens, config.temperature,
                                   config.top_p, config.seed, max_batch_size=config.batch_size)
            for prompt, (choices, usage) in zip(batch, answers):
                writer.write(prompt, choices, usage)
            bar.update(len(batch))
    return writer, len(todo)
