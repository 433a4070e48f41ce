"""Requests to an OpenAI-compatible teacher, through the official ``openai`` client.

The client already does the hard part of talking to a busy server: it retries 429,
5xx, timeouts and dropped connections with exponential backoff and honours
``Retry-After``. We set its retries and timeout, bound the requests in flight, and
count what it retried (from its own log lines) for the progress bar.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os

import openai
from tqdm.auto import tqdm

from specdistill.teacher.generate_config import GenerateConfig
from specdistill.teacher.record_writer import RecordWriter


class _RetryCounter(logging.Handler):
    """Counts the client's 'Retrying request ...' log records (and keeps them off the screen)."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.retries = 0

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("Retrying request"):
            self.retries += 1


@contextlib.contextmanager
def counting_retries():
    logger = logging.getLogger("openai._base_client")
    counter, level, propagate = _RetryCounter(), logger.level, logger.propagate
    logger.addHandler(counter)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield counter
    finally:
        logger.removeHandler(counter)
        logger.setLevel(level)
        logger.propagate = propagate


def _choice(choice, chat: bool) -> dict:
    if not chat:
        return {"response": choice.text or "", "finish_reason": choice.finish_reason}
    message = choice.message
    extra = message.model_extra or {}
    reasoning = getattr(message, "reasoning_content", None) or extra.get("reasoning_content") or extra.get("reasoning")
    return {"response": message.content or "", "finish_reason": choice.finish_reason} | (
        {"reasoning": reasoning} if reasoning else {})


async def ask(client: openai.AsyncOpenAI, config: GenerateConfig, messages: list[dict]) -> tuple[list[dict], dict]:
    """One request: (choices as {response, finish_reason[, reasoning]}, token usage)."""
    sampling = dict(model=config.model, n=config.n, temperature=config.temperature, top_p=config.top_p,
                    max_tokens=config.max_tokens, seed=config.seed)
    if config.api == "chat":
        response = await client.chat.completions.create(messages=messages, **sampling)
    else:  # a completions endpoint takes raw text: the turns one per line
        response = await client.completions.create(prompt="\n".join(m["content"] for m in messages), **sampling)
    usage = {}
    if response.usage is not None:
        usage = {"prompt_tokens": response.usage.prompt_tokens, "completion_tokens": response.usage.completion_tokens}
    if not response.choices:
        raise ValueError("the endpoint answered with no choices")
    return [_choice(c, config.api == "chat") for c in response.choices], usage


def generate_from_endpoint(config: GenerateConfig, prompts: list[dict], progress: bool) -> tuple[RecordWriter, int]:
    """Answer the prompts not answered yet; returns the writer (its counts) and the requests sent."""
    writer = RecordWriter(config, config.model)
    todo = writer.todo(prompts)
    return writer, asyncio.run(_answer_all(config, todo, writer, progress))


async def _answer_all(config: GenerateConfig, todo: list[dict], writer: RecordWriter, progress: bool) -> int:
    client = openai.AsyncOpenAI(base_url=config.endpoint, api_key=config.api_key or os.environ.get(
        "OPENAI_API_KEY", "EMPTY"), max_retries=config.max_retries, timeout=config.timeout)
    queue = iter(todo)
    bar = tqdm(total=len(todo), desc="teacher answers", unit="prompt", disable=not progress)

    async def worker(counter: _RetryCounter) -> None:
        for prompt in queue:  # one shared iterator: each prompt goes to exactly one worker
            try:
                choices, usage = await ask(client, config, prompt["messages"])
            except (openai.APIError, ValueError) as err:
                writer.fail(prompt, err, attempts=config.max_retries + 1)
            else:
                writer.write(prompt, choices, usage)
            bar.update(1)
            bar.set_postfix(retries=counter.retries, failures=writer.counts["failures"],
                            dropped=sum(v for k, v in writer.counts.items() if k.startswith("dropped")))

    try:
        with counting_retries() as counter:
            await asyncio.gather(*(worker(counter) for _ in range(min(config.concurrency, max(len(todo), 1)))))
            writer.counts["retries"] = counter.retries
    finally:
        bar.close()
        await client.close()
    return len(todo)
