"""``specdistill serve``: an OpenAI-compatible HTTP server over the continuous-batching engine.

    POST /v1/completions, POST /v1/chat/completions   (stream: true for server-sent events)
    GET  /v1/models, /health, /metrics                 (Prometheus text format)
    POST /admin/draft {"draft": "DIR"}                  (swap the draft between steps: ``admin.py``)

The routes only translate: a request body becomes engine requests (one per prompt
and per ``n``), their chunks become OpenAI responses. Load and faults: a bounded
queue answers 429 with Retry-After, a per-request timeout ends a request, a client
that goes away frees its row at the next step, bodies and ``max_tokens`` are
bounded, ``--api-key`` guards /v1 and /admin. Every bad input is a 4xx with an OpenAI error
object and the server keeps serving; a failed decode step fails its requests only.
With ``--capture DIR`` each finished request is appended to JSON-lines files there
(``capture.py``), off the decode thread; with ``--capture-features`` also the target states
a head's fine-tune reads (``DIR/states``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import threading
import time
from dataclasses import dataclass

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from specdistill.serve.admin import DraftSwapRequest, swap_draft
from specdistill.serve.async_engine import AsyncEngine, EngineError, QueueFull
from specdistill.serve.capture import TrafficCapture, choice_records
from specdistill.serve.config import ServeConfig, load_generator
from specdistill.serve.metrics import ServerMetrics
from specdistill.serve.middleware import BodyLimit, Guard
from specdistill.serve.protocol import (
    FINISH_REASONS,
    APIError,
    ChatCompletionRequest,
    Choice,
    CompletionRequest,
    chat_chunk,
    chat_response,
    completion_chunk,
    completion_response,
    error_response,
    new_id,
    now,
    usage,
    validation_message,
)
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException as StarletteHTTPException

from specdistill.data.prompts import chat_ids
from specdistill.models.loading import target_identity


@dataclass
class ServerState:
    """What the route handlers share (``app.state.server``)."""

    engine: AsyncEngine
    tokenizer: object
    config: ServeConfig
    model_name: str
    metrics: ServerMetrics
    start_engine: bool  # the app starts the engine in a thread of its own, else the caller steps it
    capture: TrafficCapture | None = None
    captured_target: str = ""  # the target's name in capture records (``target_identity``, resolved once)

    @property
    def context(self) -> int | None:
        return self.engine.engine.gen.max_positions


def build_app(engine: AsyncEngine, tokenizer, config: ServeConfig, model_name: str,
              start_engine: bool = True) -> FastAPI:
    """The FastAPI app over an ``AsyncEngine``, which it starts in a thread of its own
    with the app (``start_engine``), or which the caller steps (``run_forever``)."""
    app = FastAPI(title="specdistill", lifespan=_lifespan)
    capture = TrafficCapture(config.capture, config.capture_sample, config.capture_max_mb << 20) \
        if config.capture else None
    metrics = ServerMetrics(engine, model_name, capture)
    engine.engine.capture_states = bool(capture and config.capture_features)
    app.state.server = ServerState(engine, tokenizer, config, model_name, metrics, start_engine, capture,
                                   target_identity(config.target) if capture else "")
    app.state.metrics = metrics
    # Pure ASGI middlewares (not @app.middleware, whose wrapper hides client disconnects).
    app.add_middleware(BodyLimit, limit=config.max_body_bytes)
    app.add_middleware(Guard, api_key=config.api_key, metrics=metrics)
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(APIError, api_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_api_route("/health", health, methods=["GET"])
    app.add_api_route("/metrics", prometheus, methods=["GET"])
    app.add_api_route("/v1/models", list_models, methods=["GET"])
    app.add_api_route("/v1/completions", completions, methods=["POST"])
    app.add_api_route("/v1/chat/completions", chat_completions, methods=["POST"])
    app.add_api_route("/admin/draft", admin_draft, methods=["POST"])
    return app


@contextlib.asynccontextmanager
async def _lifespan(app: FastAPI):
    state: ServerState = app.state.server
    if state.start_engine:
        state.engine.start()
    yield
    if state.start_engine:
        state.engine.close()
    if state.capture is not None:
        state.capture.close()


def _state(request: Request) -> ServerState:
    return request.app.state.server


async def invalid_request(_request: Request, err: RequestValidationError):
    message, param = validation_message(err.errors())
    return error_response(400, message, param=param)


async def api_error(_request: Request, err: APIError):
    return err.response()


async def http_error(_request: Request, err: StarletteHTTPException):
    code = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}.get(err.status_code)
    return error_response(err.status_code, str(err.detail), param=None, code=code)


async def health(request: Request):
    engine = _state(request).engine
    return {"status": "ok", "running": engine.num_running, "waiting": engine.num_waiting}


async def prometheus(request: Request):
    return Response(_state(request).metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")


async def list_models(request: Request):
    state = _state(request)
    return {"object": "list", "data": [{"id": state.model_name, "object": "model", "created": now(),
                                        "owned_by": "specdistill", "max_model_len": state.context}]}


async def completions(raw: Request, body: CompletionRequest):
    return await _respond(_state(raw), raw, body)


async def chat_completions(raw: Request, body: ChatCompletionRequest):
    return await _respond(_state(raw), raw, body)


async def admin_draft(raw: Request, body: DraftSwapRequest):
    return await swap_draft(raw, body)


def _encode(state: ServerState, body, prompt) -> list[int]:
    if isinstance(prompt, list):
        return prompt
    if isinstance(body, ChatCompletionRequest):
        if not getattr(state.tokenizer, "chat_template", None):
            raise APIError(400, "this model's tokenizer has no chat template; use /v1/completions")
        return chat_ids(state.tokenizer, [m.as_template_input() for m in body.messages])
    return state.tokenizer(prompt)["input_ids"]


def _budget(body) -> int | None:
    return body.budget() if isinstance(body, ChatCompletionRequest) else body.max_tokens


def _check(state: ServerState, body) -> None:
    if body.model != state.model_name:
        raise APIError(404, f"the model {body.model!r} does not exist; this server serves {state.model_name!r}",
                       param="model", code="model_not_found")
    if field := body.unsupported():
        raise APIError(400, f"{field} is not supported by this server", param=field)
    budget, limit = _budget(body), state.config.max_tokens_limit
    if budget is not None and budget > limit:
        raise APIError(400, f"max_tokens is {budget}, above this server's limit of {limit}", param="max_tokens")


def _submit(state: ServerState, body, prompt_ids: list[int], index: int):
    budget, context, config = _budget(body), state.context, state.config
    room = context - len(prompt_ids) if context else config.max_tokens_limit
    if room < 1:
        raise APIError(400, f"the prompt has {len(prompt_ids)} tokens, which fills the model's context of "
                            f"{context}; shorten it", param="messages" if hasattr(body, "messages") else "prompt")
    if budget is not None and budget > room:
        raise APIError(400, f"the prompt ({len(prompt_ids)} tokens) + max_tokens ({budget}) exceeds the "
                            f"model's context of {context} tokens; lower max_tokens", param="max_tokens")
    seed = None if body.seed is None else body.seed + index
    try:
        return state.engine.submit(prompt_ids, max_new_tokens=budget or min(room, config.max_tokens_limit),
                                   temperature=body.temperature, top_p=body.top_p, top_k=body.top_k, seed=seed,
                                   stop=body.stop)
    except QueueFull as err:
        raise APIError(429, f"the server is busy ({err}); retry later", type="rate_limit_error",
                       code="queue_full", headers={"Retry-After": str(config.retry_after)}) from err
    except ValueError as err:
        raise APIError(400, str(err)) from err


def _start(state: ServerState, body) -> tuple[list[Choice], int]:
    """One engine request per prompt and per ``n``; on a bad one, none is left running."""
    _check(state, body)
    prompts = [_encode(state, body, p) for p in (body.prompts() if isinstance(body, CompletionRequest) else [None])]
    choices: list[Choice] = []
    try:
        for prompt_ids in prompts:
            for _ in range(body.n):
                choices.append(Choice(len(choices), _submit(state, body, prompt_ids, len(choices)), len(prompt_ids)))
    except APIError:
        _cancel_all(state.engine, choices)
        raise
    state.metrics.prompt_tokens.inc(sum(map(len, prompts)))
    return choices, sum(map(len, prompts))


async def _respond(state: ServerState, raw: Request, body):
    arrival = time.perf_counter()
    choices, prompt_tokens = _start(state, body)
    engine, metrics, timeout, model = state.engine, state.metrics, state.config.request_timeout, state.model_name
    chat = isinstance(body, ChatCompletionRequest)
    ident, created = new_id("chatcmpl" if chat else "cmpl"), now()
    capture = _capturer(state, raw, body, ident, created, choices)
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        events = _stream_events(engine, metrics, choices, arrival, timeout, chat, ident, created, model,
                                prompt_tokens, include_usage)
        # Runs after the stream, also when the client left before it began: no row outlives it.
        return StreamingResponse(events, media_type="text/event-stream",
                                 background=BackgroundTask(_end_all, engine, choices, capture))
    status = None
    try:
        await asyncio.wait_for(_collect_all(engine, metrics, raw, choices, arrival), timeout)
    except TimeoutError as err:
        status = "timeout"
        raise APIError(408, f"the request took longer than {timeout} s; lower max_tokens or retry",
                       type="timeout_error", code="request_timeout") from err
    except EngineError as err:
        raise APIError(500, str(err), type="server_error") from err
    finally:
        _end_all(engine, choices, capture, status)
    build = chat_response if chat else completion_response
    return JSONResponse(build(ident, created, model, choices, usage(prompt_tokens, choices)))


def _cancel_all(engine: AsyncEngine, choices: list[Choice]) -> None:
    for choice in choices:
        engine.cancel(choice.request)


def _end_all(engine: AsyncEngine, choices: list[Choice], capture, status: str | None = None) -> None:
    """No row outlives its response; its record (if captured) goes to the capture's writer."""
    _cancel_all(engine, choices)
    if capture is not None:
        capture(status)


def _capturer(state: ServerState, raw: Request, body, ident: str, created: int, choices: list[Choice]):
    """What records this response when it ends (None: not captured): a sampled share of requests."""
    if state.capture is None or not state.capture.wants():
        for choice in choices:  # not captured: its target states need not be kept
            choice.request.target_states = None
        return None
    base = {"request_id": ident, "time": created, "route": raw.url.path,
            "target": state.captured_target, "model": state.model_name}

    def capture(status: str | None) -> None:
        version = state.engine.engine.draft_versions[-1]  # the draft at the end drafted most of it
        draft = {"draft": version.name, "draft_version": version.version}
        hidden = state.engine.engine.gen.target.config.hidden_size
        for choice, record in zip(choices, choice_records(base | draft, body, choices, status)):
            request = choice.request  # its states' layers: a swap may have come since it finished
            states = (request.target_states, request.state_layers, hidden) if request.target_states else None
            state.capture.add(record, states)
    return capture


async def _observed(engine: AsyncEngine, metrics: ServerMetrics, choice: Choice, arrival: float):
    """The choice's chunks, each counted in the latency metrics as it arrives."""
    last = arrival
    async for chunk in engine.stream(choice.request):
        last = _observe(metrics, chunk, choice, arrival, last)
        yield chunk


async def _collect(engine: AsyncEngine, metrics: ServerMetrics, choice: Choice, arrival: float) -> Choice:
    async for chunk in _observed(engine, metrics, choice, arrival):
        choice.text += chunk.text
    return choice


async def _collect_all(engine, metrics, raw: Request, choices: list[Choice], arrival: float) -> None:
    """Every choice to its end; stops early (cancelling them) if the client goes away."""
    work = asyncio.gather(*(_collect(engine, metrics, c, arrival) for c in choices))
    while True:
        done, _ = await asyncio.wait({work}, timeout=0.25)
        if done:
            return work.result()
        if await raw.is_disconnected():
            work.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await work
            return None


def _observe(metrics: ServerMetrics, chunk, choice: Choice, arrival: float, last: float) -> float:
    """Latency metrics of one chunk; returns its time."""
    moment = time.perf_counter()
    if chunk.token_ids:
        if choice.tokens == 0:
            metrics.ttft.observe(moment - arrival)
        else:
            for _ in chunk.token_ids:  # a step's tokens arrive together: share its interval
                metrics.itl.observe((moment - last) / len(chunk.token_ids))
        choice.tokens += len(chunk.token_ids)
        metrics.generation_tokens.inc(len(chunk.token_ids))
    if chunk.finish_reason:
        choice.finish_reason = FINISH_REASONS.get(chunk.finish_reason, chunk.finish_reason)
        metrics.finished(choice.finish_reason)
        metrics.e2e.observe(moment - arrival)
    return moment if chunk.token_ids else last


async def _stream_events(engine, metrics, choices, arrival, timeout, chat, ident, created, model, prompt_tokens,
                         include_usage):
    """Server-sent events of all choices, interleaved as they come, then usage and [DONE].
    A timeout or a failed step ends the stream with an error event; a disconnect cancels."""
    make = chat_chunk if chat else completion_chunk
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(choice: Choice):
        try:
            async for chunk in _observed(engine, metrics, choice, arrival):
                await queue.put((choice, chunk))
        except EngineError as err:
            await queue.put((choice, APIError(500, str(err), type="server_error")))
        await queue.put((choice, None))

    tasks = [asyncio.create_task(pump(choice)) for choice in choices]
    deadline = time.monotonic() + timeout
    try:
        if chat:
            for choice in choices:  # the role comes first, as OpenAI sends it
                yield _event(make(ident, created, model, choice.index, role="assistant"))
        open_choices = len(choices)
        while open_choices:
            try:
                choice, item = await asyncio.wait_for(queue.get(), max(deadline - time.monotonic(), 0))
            except TimeoutError:
                yield _event(APIError(408, f"the request took longer than {timeout} s", type="timeout_error",
                                      code="request_timeout").body())
                break
            if item is None:
                open_choices -= 1
            elif isinstance(item, APIError):
                yield _event(item.body())
            elif item.text or item.finish_reason:
                reason = FINISH_REASONS.get(item.finish_reason, item.finish_reason) if item.finish_reason else None
                yield _event(make(ident, created, model, choice.index, text=item.text, finish_reason=reason))
        else:
            if include_usage:
                yield _event({"id": ident, "object": "chat.completion.chunk" if chat else "text_completion",
                              "created": created, "model": model, "choices": [],
                              "usage": usage(prompt_tokens, choices)})
        yield "data: [DONE]\n\n"
    finally:
        for task in tasks:
            task.cancel()


def _event(payload: dict) -> str:
    return f"data: {json.dumps(payload)}\n\n"


@contextlib.contextmanager
def serving_in_thread(app: FastAPI, host: str = "127.0.0.1", timeout: float = 60.0):
    """The app served by uvicorn in a thread of its own on a free port of ``host``; yields its URL
    (for tests and benchmarks that drive a real server from the same process)."""
    import socket

    with socket.socket() as probe:
        probe.bind((host, 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="specdistill-http", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError(f"the server did not start on {host}:{port}")
        time.sleep(0.02)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=timeout)


def run_serve(config: ServeConfig) -> dict:
    """Load the models and serve until interrupted. The engine steps in this (the main)
    thread, where the models were loaded and PyTorch runs fastest; uvicorn's event loop
    runs in a thread of its own."""
    generator, tokenizer, drafter = load_generator(config)
    engine = AsyncEngine(generator.engine(config.max_batch_size), config.max_queue)
    app = build_app(engine, tokenizer, config, config.served_name(), start_engine=False)
    server = uvicorn.Server(uvicorn.Config(app, host=config.host, port=config.port, log_level="info"))
    http = threading.Thread(target=server.run, name="specdistill-http", daemon=True)
    print(f"specdistill serve: {config.served_name()} with draft {drafter} "
          f"(k={config.num_draft_tokens}) on http://{config.host}:{config.port}/v1", flush=True)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM shuts down as Ctrl-C does
    http.start()
    try:
        engine.run_forever()
    except KeyboardInterrupt:
        pass
    finally:
        engine.close()
        server.should_exit = True
        http.join(timeout=30)
    return {}
