"""The settings of ``specdistill generate-data`` (teacher, sampling, output) and the prompts it answers.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from specdistill.data.builtin_prompts import builtin_prompt_set
from specdistill.data.prompts import prompt_id, read_prompt_records
from specdistill.options import option

log = logging.getLogger(__name__)

SYSTEM_PRESETS = {
    "none": None,
    "plain": "You are a helpful assistant. Answer clearly and correctly.",
    # Orca-style: answers that explain themselves teach a student more than bare answers.
    "explain": ("You are a helpful assistant. Think through the task step by step and explain your reasoning "
                "as you go, then give the final answer. For code, explain what each part does."),
}


@dataclass
class GenerateConfig:
    """Collect (prompt, response) records from a teacher for black-box distillation."""

    prompts: str = option("builtin", "a JSONL ('prompt', 'messages' or multi-turn 'turns', optional 'id') or text "
                                     "file, or builtin, "
                                     "builtin:python, builtin:stdlib (the project's prompt sets)")
    out: str = option("runs/teacher-data/responses.jsonl", "the JSONL file records are appended to")
    endpoint: str = option("", "an OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1 (empty = local teacher)")
    model: str = option("", "the model name the endpoint serves")
    api_key: str = option("", "the endpoint's API key (default: $OPENAI_API_KEY, else 'EMPTY')")
    api: str = option("chat", "chat (/chat/completions) or completions (/completions, the prompt as raw text)")
    teacher: str = option("smollm2-135m", "without an endpoint: a local HF model directory or the embedded default")
    system_preset: str = option("none", "system prompt: none, plain, or explain (Orca-style step-by-step answers)")
    n: int = option(1, "responses per prompt")
    temperature: float = option(0.7, "sampling temperature (0 = greedy)")
    top_p: float = option(1.0, "nucleus sampling mass")
    max_tokens: int = option(256, "the most tokens per response")
    seed: int = option(0, "sampling seed (the endpoint may ignore it)")
    concurrency: int = option(8, "requests in flight at once (endpoint)")
    max_requests: int = option(0, "stop after this many prompts are sent (0 = all)")
    timeout: float = option(60.0, "seconds per request attempt before it is retried")
    max_retries: int = option(4, "retries per request on 429, 5xx, timeouts and dropped connections")
    batch_size: int = option(16, "prompts decoded together by the local teacher")
    keep_truncated: bool = option(False, "keep responses cut at max_tokens (finish_reason 'length')")

    def __post_init__(self):
        if self.system_preset not in SYSTEM_PRESETS:
            raise ValueError(f"system_preset must be one of {', '.join(SYSTEM_PRESETS)}, got {self.system_preset!r}")
        if self.api not in ("chat", "completions"):
            raise ValueError(f"api must be chat or completions, got {self.api!r}")
        if self.endpoint and not self.model:
            raise ValueError("an endpoint needs --model (the model name it serves)")
        for name in ("n", "max_tokens", "concurrency", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_requests < 0 or self.max_retries < 0 or self.timeout <= 0:
            raise ValueError("max_requests and max_retries must be >= 0 and timeout > 0")

    def sampling(self) -> dict:
        return {"temperature": self.temperature, "top_p": self.top_p, "max_tokens": self.max_tokens, "n": self.n,
                "seed": self.seed}


def load_prompts(config: GenerateConfig) -> list[dict]:
    """[{id, messages}] with the system preset applied; ids are unique."""
    if config.prompts.startswith("builtin"):
        raw = [{"prompt": p} for p in builtin_prompt_set(config.prompts)]
    else:
        raw = read_prompt_records(config.prompts)
    system = SYSTEM_PRESETS[config.system_preset]
    prompts, seen = [], set()
    for row in raw:
        turns = row.get("turns") or [row.get("prompt")]
        messages = row.get("messages") or [{"role": "user", "content": turns[0]}]
        if system and messages[0].get("role") != "system":
            messages = [{"role": "system", "content": system}, *messages]
        pid = str(row.get("id") or prompt_id(messages + [{"role": "user", "content": t} for t in turns[1:]]))
        if pid not in seen:
            seen.add(pid)
            prompts.append({"id": pid, "messages": messages} | ({"followups": turns[1:]} if len(turns) > 1 else {}))
    return prompts


def next_turns(prompts: list[dict], records: list[dict]) -> list[dict]:
    """The next turn of each multi-turn prompt whose answer was kept: its messages, the teacher's
    answer (the first sample) and the next user turn, under the id ``<id>-t<N>``."""
    answers = {row["id"]: row["response"] for row in records if row.get("sample", 0) == 0}
    following = []
    for prompt in prompts:
        if prompt.get("followups") and prompt["id"] in answers:
            turn = sum(m["role"] == "user" for m in prompt["messages"]) + 1
            messages = prompt["messages"] + [{"role": "assistant", "content": answers[prompt["id"]]},
                                             {"role": "user", "content": prompt["followups"][0]}]
            following.append({"id": f"{prompt['id'].rsplit('-t', 1)[0]}-t{turn}", "messages": messages}
                             | ({"followups": prompt["followups"][1:]} if len(prompt["followups"]) > 1 else {}))
    return following
