"""Prompts the target writes itself: ``specdistill make-prompts --source target``.

What the target answers when served depends on what users ask it, so its own idea of
a user's request is a useful third source beside the built-in sets and prompts made
from local text. A small instruct model asked in a chat to "write a question" mostly
answers one instead, so the request is a continuation: a numbered list of four of the
project's built-in prompts (seeded choice, never a held-out one), and the target
writes the fifth, sampled (T = 1, top-p 0.95) and cut at the end of its line. A line
is kept when it reads like a request (4 to 60 words, not cut off) and is new: not a
built-in or held-out prompt and not written before.
"""

from __future__ import annotations

import random

import torch
from tqdm.auto import tqdm

from specdistill.data.builtin_prompts import builtin_prompt_set
from specdistill.data.prompts import HELDOUT_PROMPTS
from specdistill.models import DEFAULT_TARGET, load_target
from specdistill.models.loading import batch_dtype
from specdistill.serve import SpeculativeGenerator

HEADER = "Questions that users asked a Python assistant:\n"
SHOTS, MAX_NEW_TOKENS = 4, 48


def few_shot_text(examples: list[str]) -> str:
    """The list the target continues: the examples numbered, then the next number."""
    lines = "".join(f"{n}. {example}\n" for n, example in enumerate(examples, 1))
    return f"{HEADER}{lines}{len(examples) + 1}."


def clean_request(text: str, finished: bool) -> str | None:
    """The written line as a prompt, or None when it is cut off or does not read like one."""
    line = text.split("\n")[0].strip()
    words = line.split()
    if not finished or not 4 <= len(words) <= 60 or line[-1] not in ".?!)`":
        return None
    return line


def target_written_prompts(count: int, seed: int = 0, model: str = DEFAULT_TARGET, batch_size: int = 32,
                           progress: bool = True) -> list[dict]:
    """Up to ``count`` distinct prompts ({prompt, source}) written by ``model``; it stops
    early if four times ``count`` attempts did not give enough."""
    target, tokenizer = load_target(model, dtype=batch_dtype())  # bf16 where native, else fp32 (faster)
    engine = SpeculativeGenerator(target, None, tokenizer=tokenizer).engine(max_batch_size=batch_size)
    stops = tokenizer.encode("\n", add_special_tokens=False)[-1:] + [tokenizer.eos_token_id]
    pool = builtin_prompt_set("builtin")
    rng, seen, found, attempts = random.Random(seed), set(HELDOUT_PROMPTS) | set(pool), [], 0
    with tqdm(total=count, desc="target-written prompts", unit="prompt", disable=not progress) as bar:
        while len(found) < count and attempts < 4 * count:
            requests = []
            for _ in range(batch_size):
                ids = torch.tensor(tokenizer(few_shot_text(rng.sample(pool, SHOTS)))["input_ids"])
                requests.append((len(ids), engine.add(ids, MAX_NEW_TOKENS, 1.0, 0.95, 0, stops,
                                                      rng.randrange(2**31))))
            while engine.has_work():
                engine.step()
            attempts += batch_size
            for length, request in requests:
                written = tokenizer.decode(request.tokens[length:], skip_special_tokens=True)
                prompt = clean_request(written, request.finish_reason != "length")
                if prompt and prompt not in seen and len(found) < count:
                    seen.add(prompt)
                    found.append({"prompt": prompt, "source": f"target:{model}"})
                    bar.update(1)
    return found
