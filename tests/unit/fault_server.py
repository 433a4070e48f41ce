"""A loopback OpenAI-compatible server that injects faults, for the teacher-data tests.

It speaks just enough HTTP/1.1 (one request per connection) to drop a connection in
the middle of a response. Markers in the last message of a prompt pick its fault:

    [429]   the first attempt gets 429 with Retry-After
    [500]   the first attempt gets 500
    [drop]  the first attempt's connection closes mid-body
    [slow]  every attempt answers after the client's timeout
    [fail]  every attempt gets 500
    [empty] / [length] / [dup]   an empty answer / one cut at max_tokens / one shared answer
    [think] the answer carries reasoning_content
"""

from __future__ import annotations

import asyncio
import collections
import json
import socket
import threading


class FaultServer:
    def __init__(self, slow_seconds: float = 2.0, delay: float = 0.0):
        self.attempts = collections.Counter()  # prompt text -> requests seen
        self.slow_seconds, self.delay = slow_seconds, delay
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self):
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc):
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def _serve(self):
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", self.port))
        self._ready.set()
        self._loop.run_forever()
        # Stopped: end the handlers still waiting (slow answers) before the loop closes.
        server.close()
        pending = asyncio.all_tasks(self._loop)
        for task in pending:
            task.cancel()
        self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        self._loop.close()

    async def _handle(self, reader, writer):
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(next((line.split(b":")[1] for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length")), b"0"))
            body = json.loads(await reader.readexactly(length))
            await self._answer(head.split(b" ")[1].decode(), body, writer)
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def _answer(self, path: str, body: dict, writer):
        chat = path.endswith("/chat/completions")
        text = body["messages"][-1]["content"] if chat else body["prompt"]
        self.attempts[text] += 1
        first = self.attempts[text] == 1
        if self.delay:
            await asyncio.sleep(self.delay)
        if "[429]" in text and first:
            return _send(writer, 429, {"error": {"message": "slow down"}},
                         {"retry-after-ms": "20", "retry-after": "1"})
        if ("[500]" in text and first) or "[fail]" in text:
            return _send(writer, 500, {"error": {"message": "boom"}})
        if "[slow]" in text:
            await asyncio.sleep(self.slow_seconds)
        answer = "" if "[empty]" in text else "the same answer" if "[dup]" in text else f"answer to {text}"
        finish = "length" if "[length]" in text else "stop"
        choices = []
        for i in range(body.get("n", 1)):
            content = answer if i == 0 or not answer else f"{answer} (sample {i})"
            if chat:
                message = {"role": "assistant", "content": content}
                if "[think]" in text:
                    message["reasoning_content"] = "thinking about it"
                choices.append({"index": i, "message": message, "finish_reason": finish})
            else:
                choices.append({"index": i, "text": content, "finish_reason": finish})
        payload = {"id": "x", "object": "chat.completion" if chat else "text_completion", "created": 0,
                   "model": body["model"], "choices": choices,
                   "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}}
        if "[drop]" in text and first:
            data = json.dumps(payload).encode()
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
                         + str(len(data)).encode() + b"\r\n\r\n" + data[: len(data) // 2])
            return None  # the connection closes with half the body sent
        return _send(writer, 200, payload)


def _send(writer, status: int, payload: dict, headers: dict | None = None) -> None:
    data = json.dumps(payload).encode()
    lines = [f"HTTP/1.1 {status} X", "content-type: application/json", f"content-length: {len(data)}",
             "connection: close", *(f"{k}: {v}" for k, v in (headers or {}).items())]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + data)
