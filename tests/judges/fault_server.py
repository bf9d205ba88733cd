"""A scripted HTTP server on 127.0.0.1 for fault injection: 500s, 429 + Retry-After, garbage,
hangs, slow answers, in a chosen order. It runs in the test's own event loop; every connection is
closed after one answer, and `stop()` cancels hanging handlers, so nothing outlives the test."""
from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any, Callable

_MAX_HEADER = 64 * 1024


@dataclass
class Reply:
    status: int = 200
    body: Any = None  # dict/list -> JSON; str/bytes -> sent as is
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    hang: bool = False  # never answer (the client must time out)
    trickle_s: float = 0.0  # > 0: send the body one byte per trickle_s seconds (each read is quick)


def ok(body) -> Reply:
    return Reply(200, body)


def chat_body(text: str, logprobs=None) -> dict:
    choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
    if logprobs is not None:
        choice["logprobs"] = {"content": logprobs}
    return {"id": "x", "object": "chat.completion", "choices": [choice],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}}


class FaultServer:
    """`script`: a list of Reply (consumed in order; the last one repeats) or a callable
    (path, json_body) -> Reply."""

    def __init__(self, script: list[Reply] | Callable[[str, Any], Reply], port: int = 0):
        self.script = script
        self.requests: list[tuple[str, str, Any, dict[str, str]]] = []  # (method, path, json, headers)
        self.in_flight = 0
        self.max_in_flight = 0
        self._n = 0
        self._server = None
        self._tasks: set[asyncio.Task] = set()
        self.port = port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def __aenter__(self) -> "FaultServer":
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc) -> None:
        await self.stop()

    async def stop(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        self._server.close()
        await self._server.wait_closed()

    def _next(self, path: str, body: Any) -> Reply:
        if callable(self.script):
            return self.script(path, body)
        reply = self.script[min(self._n, len(self.script) - 1)]
        self._n += 1
        return reply

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._tasks.add(task)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            if len(head) > _MAX_HEADER:
                return
            lines = head.decode("latin-1").split("\r\n")
            method, path, _ = lines[0].split(" ", 2)
            headers = {}
            for line in lines[1:]:
                if ":" in line:
                    k, v = line.split(":", 1)
                    headers[k.strip().lower()] = v.strip()
            raw = await reader.readexactly(int(headers.get("content-length", "0")))
            body = json.loads(raw) if raw else None
            self.requests.append((method, path, body, headers))
            reply = self._next(path, body)
            if reply.hang:
                await asyncio.sleep(3600)
            if reply.delay_s:
                await asyncio.sleep(reply.delay_s)
            payload = reply.body
            if isinstance(payload, (dict, list)):
                data = json.dumps(payload).encode()
            elif isinstance(payload, str):
                data = payload.encode()
            else:
                data = payload or b""
            extra = "".join(f"{k}: {v}\r\n" for k, v in reply.headers.items())
            head = (f"HTTP/1.1 {reply.status} X\r\nContent-Type: application/json\r\nContent-Length: {len(data)}\r\n"
                    f"Connection: close\r\n{extra}\r\n").encode()
            if reply.trickle_s > 0:
                writer.write(head)
                for n in range(len(data)):  # bounded: len(data) x trickle_s seconds at most
                    writer.write(data[n:n + 1])
                    await writer.drain()
                    await asyncio.sleep(reply.trickle_s)
            else:
                writer.write(head + data)
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self.in_flight -= 1
            self._tasks.discard(task)
            writer.close()
