"""The OpenAI wire format the server speaks: request bodies (pydantic), responses and
stream chunks, and error objects.

Errors are shaped as the OpenAI API and vLLM answer them:
``{"error": {"message", "type", "param", "code"}}`` with a 4xx/5xx status.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any, Literal

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator


class APIError(Exception):
    """An error answered with an OpenAI-style body; raised anywhere in a handler."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers

    def response(self) -> JSONResponse:
        return error_response(self.status, self.message, self.type, self.param, self.code, self.headers)

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def error_response(status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                   code: str | None = None, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": type, "param": param, "code": code}},
                        status_code=status, headers=headers)


def validation_message(errors: list[dict]) -> tuple[str, str | None]:
    """One readable message (and the offending field) from pydantic's errors."""
    first = errors[0]
    location = [str(part) for part in first.get("loc", ()) if part != "body"]
    if first.get("type") == "json_invalid":
        return f"the request body is not valid JSON ({first.get('ctx', {}).get('error', first['msg'])})", None
    if not location:
        return f"the request body must be a JSON object: {first['msg']}", None
    param = ".".join(location)
    return f"{param}: {first['msg']}" + (f" (got {first['input']!r})" if "input" in first else ""), param


class StreamOptions(BaseModel):
    include_usage: bool = False


class _Sampling(BaseModel):
    """Fields both endpoints share. Fields we cannot honour are refused, not ignored."""

    model_config = ConfigDict(extra="ignore")

    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=0)  # an extension, as vLLM has it (0 = off)
    n: int = Field(1, ge=1, le=16)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    logprobs: bool | int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict | None = None

    @field_validator("stop")
    @classmethod
    def _stop_strings(cls, stop):
        stops = [stop] if isinstance(stop, str) else stop or []
        if len(stops) > 4 or not all(stops):
            raise ValueError("stop must be up to 4 non-empty strings")
        return stop

    def unsupported(self) -> str | None:
        """The name of a field set to something this server does not do."""
        for name in ("logprobs", "logit_bias"):
            if getattr(self, name):
                return name
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(self, name) != 0:
                return name
        return None


class CompletionRequest(_Sampling):
    prompt: str | list[str] | list[int] = Field(min_length=1)
    echo: bool = False

    @field_validator("prompt")
    @classmethod
    def _non_empty(cls, prompt):
        if isinstance(prompt, list) and not all(isinstance(p, int) or p for p in prompt):
            raise ValueError("prompt strings must not be empty")
        return prompt

    def prompts(self) -> list[str | list[int]]:
        """One entry per prompt: a string, or a list of token ids."""
        if isinstance(self.prompt, str):
            return [self.prompt]
        return [self.prompt] if isinstance(self.prompt[0], int) else list(self.prompt)

    def unsupported(self) -> str | None:
        return "echo" if self.echo else super().unsupported()


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None

    def as_template_input(self) -> dict:
        content = self.content if isinstance(self.content, str) or self.content is None else "".join(
            part.text for part in self.content)
        role = "system" if self.role == "developer" else self.role
        return {"role": role, "content": content or ""}


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)

    def budget(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def now() -> int:
    return int(time.time())


# What the engine's finish reasons are called on the wire.
FINISH_REASONS = {"eos": "stop", "stop": "stop", "length": "length"}


@dataclass
class Choice:
    """One engine request behind one ``choices[i]`` of a response."""

    index: int
    request: Any  # scheduler.Request
    prompt_tokens: int
    text: str = ""
    tokens: int = 0
    finish_reason: str | None = None


def usage(prompt_tokens: int, choices: list[Choice]) -> dict:
    completion = sum(choice.tokens for choice in choices)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion, "total_tokens": prompt_tokens + completion}


def completion_response(ident: str, created: int, model: str, choices: list[Choice], used: dict) -> dict:
    return {"id": ident, "object": "text_completion", "created": created, "model": model, "usage": used,
            "choices": [{"index": c.index, "text": c.text, "logprobs": None, "finish_reason": c.finish_reason}
                        for c in choices]}


def chat_response(ident: str, created: int, model: str, choices: list[Choice], used: dict) -> dict:
    return {"id": ident, "object": "chat.completion", "created": created, "model": model, "usage": used,
            "choices": [{"index": c.index, "message": {"role": "assistant", "content": c.text}, "logprobs": None,
                         "finish_reason": c.finish_reason} for c in choices]}


def completion_chunk(ident: str, created: int, model: str, index: int, text: str = "",
                     finish_reason: str | None = None) -> dict:
    return {"id": ident, "object": "text_completion", "created": created, "model": model,
            "choices": [{"index": index, "text": text, "logprobs": None, "finish_reason": finish_reason}]}


def chat_chunk(ident: str, created: int, model: str, index: int, text: str | None = None,
               finish_reason: str | None = None, role: str | None = None) -> dict:
    delta = {"role": role, "content": ""} if role else ({"content": text} if text else {})
    return {"id": ident, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]}
