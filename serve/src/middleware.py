"""The server's two ASGI middlewares: a request-body limit (413) and ``--api-key`` with error counts.
Pure ASGI, not ``@app.middleware``, whose wrapper hides client disconnects."""

from __future__ import annotations

from specdistill.serve.metrics import ServerMetrics
from specdistill.serve.protocol import error_response
from starlette.exceptions import HTTPException as StarletteHTTPException


class BodyLimit:
    """Refuses request bodies over ``limit`` bytes with 413, declared or streamed."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            response = error_response(413, f"the request body is over {self.limit} bytes",
                                      code="request_too_large")
            return await response(scope, receive, send)
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:  # FastAPI passes HTTPException through while it reads the body
                raise StarletteHTTPException(413, f"the request body is over {self.limit} bytes")
            return message

        return await self.app(scope, counted, send)


class Guard:
    """``--api-key`` on /v1 and /admin, and error counts by status for /metrics."""

    def __init__(self, app, api_key: str, metrics: ServerMetrics):
        self.app, self.api_key, self.metrics = app, api_key, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if self.api_key and scope["path"].startswith(("/v1", "/admin")):
            given = dict(scope.get("headers", [])).get(b"authorization", b"").decode("latin-1")
            if given != f"Bearer {self.api_key}":
                self.metrics.error(401)
                response = error_response(401, "missing or wrong API key: send 'Authorization: Bearer <key>'",
                                          code="invalid_api_key")
                return await response(scope, receive, send)

        async def counted(message):
            if message["type"] == "http.response.start" and message["status"] >= 400:
                self.metrics.error(message["status"])
            await send(message)

        return await self.app(scope, receive, counted)
