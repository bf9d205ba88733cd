"""A local OpenAI-compatible judge server with a realistic latency model, for tests and benchmarks.

It answers what mpo_fast's judges ask (mpo_fast/judges/prompts.py) the way a served LLM judge
would, without a model: a short justification, then each requested score in the exact format the
prompt shows (`<score-3f9a1c>N</score-3f9a1c>`, `<item2-...>`, or a JSON object when the request
carries a JSON schema), and `logprobs` / `top_logprobs` peaked on that score. The score is a pure
function of the graded response and criterion (the per-call nonce is ignored), so the same sample
gets the same score from every run, which is what lets a benchmark check that two schedules give
identical rewards.

Latency (a batching server such as vLLM or SGLang):
    queue wait (all `capacity` sequence slots busy)
  + base_s + prompt_tokens * prefill_s_per_token                        (time to first token)
  + completion_tokens * decode_s_per_token * (1 + batch_slowdown * (running - 1))
Tokens are counted as characters / 4 (English text). The defaults model a ~7B judge on one GPU:
~12 ms per output token per sequence, 64 sequences at once, ~5 % slower per extra running sequence
at most 2x (memory-bound decode amortises the weights across the batch).

Loopback only, every read bounded (64 KiB of headers, 8 MiB of body, 30 s idle), no code path
evaluates request text. Run it in a thread (`JudgeServer(...).start()`) or as a process:

    python -m mpo_fast.testing.judge_server --port 0 --port-file /tmp/port
"""
from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import math
import re
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

_MAX_HEADER_BYTES = 64 * 1024
_MAX_BODY_BYTES = 8 * 1024 * 1024
_IDLE_TIMEOUT_S = 30.0
_CHARS_PER_TOKEN = 4.0

# What a judge prompt shows for each score: `<NAME>N</NAME>` (tag form) or `"NAME": N` (JSON form),
# N being the placeholder mpo_fast/judges/prompts.py writes instead of a number.
_TAG_PLACEHOLDER = re.compile(r"<([A-Za-z][\w.-]{0,63})>N</\1>")
_JSON_PLACEHOLDER = re.compile(r'"([A-Za-z][\w.-]{0,63})"\s*:\s*N\b')
_RESPONSE_FENCE = re.compile(r"<response-[0-9a-fA-F]+>\n?(.*?)\n?</response-[0-9a-fA-F]+>", re.S)
_CRITERION = re.compile(r'criterion (\d+), "(.*?)" \((\d+(?:\.\d+)?)-(\d+(?:\.\d+)?) points\)')


@dataclass(frozen=True)
class LatencyModel:
    base_s: float = 0.03
    prefill_s_per_token: float = 0.00002
    decode_s_per_token: float = 0.012
    capacity: int = 64
    batch_slowdown: float = 0.05
    max_slowdown: float = 2.0
    rationale_tokens: int = 48  # justification length the simulated judge writes before its scores
    free_text_tokens: int = 160  # answers that ask for no score (the meta-judge's analyses)

    def __post_init__(self) -> None:
        if self.capacity < 1:
            raise ValueError(f"LatencyModel.capacity={self.capacity}; a server runs at least one sequence")
        for name in ("base_s", "prefill_s_per_token", "decode_s_per_token", "batch_slowdown"):
            if getattr(self, name) < 0:
                raise ValueError(f"LatencyModel.{name} must be >= 0")

    def service_s(self, prompt_tokens: int, completion_tokens: int, running: int) -> float:
        slowdown = min(self.max_slowdown, 1.0 + self.batch_slowdown * max(0, running - 1))
        return self.base_s + prompt_tokens * self.prefill_s_per_token + completion_tokens * self.decode_s_per_token * slowdown


def _tokens(text: str) -> int:
    return max(1, round(len(text) / _CHARS_PER_TOKEN))


def _unit(*parts: str) -> float:
    """A deterministic number in [0, 1) from the parts (blake2b, not Python's salted hash)."""
    h = hashlib.blake2b("\x1f".join(parts).encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(h, "big") / 2**64


def simulated_score(response: str, criterion: str, lo: float, hi: float) -> int:
    """The score the simulated judge gives: longer, more varied answers score higher, with a
    per-(response, criterion) jitter so a group of samples gets spread-out rewards."""
    words = response.split()
    variety = len(set(words)) / max(len(words), 1)
    quality = 0.45 * min(1.0, len(words) / 60.0) + 0.25 * variety + 0.30 * _unit(response, criterion)
    return int(round(lo + quality * (hi - lo)))


@dataclass
class _Item:
    name: str  # the tag or JSON key the judge reads
    criterion: str
    lo: float
    hi: float


def _items_from_prompt(text: str, json_keys: list[str] | None) -> list[_Item]:
    names = json_keys if json_keys else [m.group(1) for m in _TAG_PLACEHOLDER.finditer(text)]
    if not names:
        names = [m.group(1) for m in _JSON_PLACEHOLDER.finditer(text)]
    found = list(_CRITERION.finditer(text))
    criteria = {int(m.group(1)): (m.group(2), float(m.group(3)), float(m.group(4))) for m in found}
    items = []
    for i, name in enumerate(names):
        # Several items are read from names item<k>-<nonce> (criterion k); one item from
        # score-<nonce>, graded on the one criterion the prompt names ("Grade only criterion K").
        k = re.match(r"item(\d+)", name)
        if k:
            key = int(k.group(1))
        elif len(names) == 1 and found:
            key = int(found[0].group(1))
        else:
            key = i + 1
        title, lo, hi = criteria.get(key, (f"criterion {key}", 0.0, 10.0))
        items.append(_Item(name, title, lo, hi))
    return items


def _graded_response(text: str) -> str:
    m = _RESPONSE_FENCE.search(text)
    return m.group(1) if m else text


def _justification(response: str, n_tokens: int) -> str:
    words = response.split()[:8]
    quote = " ".join(words) if words else "(empty)"
    filler = " The response addresses the prompt with some specific detail and could be more precise."
    text = f'The response opens with "{quote}".' + filler
    while _tokens(text) < n_tokens:
        text += filler
    return text[: int(n_tokens * _CHARS_PER_TOKEN)].rstrip()


def _text_of_length(seed: str, lo: int, hi: int) -> str:
    words = ("specific", "evidence", "criterion", "response", "prompt", "claims", "detail", "structure", "accurate",
             "concise", "examples", "reasoning", "coherent", "original", "relevant")
    out, i = [], 0
    target = max(lo, min(hi, 60))
    while len(" ".join(out)) < target:
        out.append(words[int(_unit(seed, str(i)) * len(words))])
        i += 1
    return " ".join(out)[:hi].strip() or "x" * max(1, lo)


def _json_from_schema(schema: dict, seed: str, depth: int = 0):
    """A value valid for a (simple) JSON schema: objects, arrays, strings, integers, numbers,
    booleans, enums; lengths and ranges respected. Deterministic in `seed`."""
    if depth > 6:
        raise ValueError("JSON schema nested too deeply for the simulated judge")
    if "enum" in schema:
        return schema["enum"][int(_unit(seed) * len(schema["enum"]))]
    kind = schema.get("type")
    if kind == "object":
        return {k: _json_from_schema(v, f"{seed}/{k}", depth + 1) for k, v in schema.get("properties", {}).items()}
    if kind == "array":
        lo, hi = int(schema.get("minItems", 1)), int(schema.get("maxItems", 3))
        n = max(lo, min(hi, 2 + int(_unit(seed, "n") * 2)))
        return [_json_from_schema(schema.get("items", {}), f"{seed}[{i}]", depth + 1) for i in range(n)]
    if kind == "string":
        return _text_of_length(seed, int(schema.get("minLength", 1)), int(schema.get("maxLength", 200)))
    if kind in ("integer", "number"):
        lo, hi = float(schema.get("minimum", 0)), float(schema.get("maximum", 10))
        v = lo + _unit(seed) * (hi - lo)
        return int(round(v)) if kind == "integer" else round(v, 3)
    if kind == "boolean":
        return _unit(seed) < 0.5
    raise ValueError(f"unsupported JSON schema type {kind!r}")


def _schema_keys(schema: dict) -> tuple[list[str], list[str]]:
    """(score keys, string keys) of a flat JSON object schema, in declared order."""
    props = schema.get("properties", {}) if isinstance(schema, dict) else {}
    scores, strings = [], []
    for key, spec in props.items():
        kind = spec.get("type") if isinstance(spec, dict) else None
        (strings if kind == "string" else scores).append(key)
    return scores, strings


def _request_schema(body: dict) -> dict | None:
    rf = body.get("response_format")
    if isinstance(rf, dict):
        if isinstance(rf.get("json_schema"), dict):
            return rf["json_schema"].get("schema")
        if isinstance(rf.get("schema"), dict):
            return rf["schema"]
    so = body.get("structured_outputs")
    if isinstance(so, dict) and isinstance(so.get("json"), dict):
        return so["json"]
    if isinstance(body.get("guided_json"), dict):
        return body["guided_json"]
    return None


def _digit_top(written: str, target: int, k: int) -> dict[str, float]:
    """Next-token log-probs after `<tag>` + `written`: 85 % on continuing the target score's text."""
    want = str(target)
    nxt = want[len(written)] if want.startswith(written) and len(written) < len(want) else "<"
    options = [nxt] + [c for c in "0123456789<" if c != nxt]
    probs = [0.85] + [0.15 / (len(options) - 1)] * (len(options) - 1)
    return {tok: math.log(p) for tok, p in list(zip(options, probs))[: max(1, k)]}


@dataclass
class ServerStats:
    requests: int = 0
    completion_tokens: int = 0
    max_running: int = 0
    busy_s: float = 0.0  # time with at least one request being served
    errors: int = 0
    by_path: dict[str, int] = field(default_factory=dict)


class JudgeServer:
    """The simulated judge; `start()` serves it from a background thread on 127.0.0.1."""

    def __init__(self, latency: LatencyModel | None = None, *, model: str = "simulated-judge", host: str = "127.0.0.1",
                 port: int = 0):
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError(f"JudgeServer binds loopback only, got host={host!r}")
        self.latency = latency or LatencyModel()
        self.model = model
        self.host = host
        self.port = port
        self.stats = ServerStats()
        self._running = 0
        self._busy_since = 0.0
        self._slots: asyncio.Semaphore | None = None
        self._server: asyncio.AbstractServer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    # ---- lifecycle ----------------------------------------------------------------------------
    async def serve(self, ready: threading.Event | None = None) -> None:
        self._slots = asyncio.Semaphore(self.latency.capacity)
        self._server = await asyncio.start_server(self._connection, self.host, self.port, limit=_MAX_HEADER_BYTES)
        self.port = self._server.sockets[0].getsockname()[1]
        if ready is not None:
            ready.set()
        async with self._server:
            await self._server.serve_forever()

    def start(self) -> "JudgeServer":
        ready = threading.Event()

        def main():
            loop = self._loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(loop.create_task(self.serve(ready)))
            except asyncio.CancelledError:
                pass
            finally:
                # Connection handlers still open (keep-alive clients) end here, while the loop
                # can still run their cleanup.
                pending = asyncio.all_tasks(loop)
                for task in pending:
                    task.cancel()
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
                loop.close()

        self._thread = threading.Thread(target=main, name="judge-server", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("the judge server did not start within 10 s")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._server is not None and not self._loop.is_closed():
            def close():
                self._server.close()
                for task in asyncio.all_tasks(self._loop):
                    task.cancel()
            try:
                self._loop.call_soon_threadsafe(close)
            except RuntimeError:
                pass
        if self._thread is not None:
            self._thread.join(5)

    def __enter__(self) -> "JudgeServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---- HTTP ---------------------------------------------------------------------------------
    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), _IDLE_TIMEOUT_S)
                except (asyncio.IncompleteReadError, asyncio.TimeoutError, ConnectionError):
                    return
                except asyncio.LimitOverrunError:
                    await self._send(writer, 431, {"error": {"message": "request headers too large"}}, close=True)
                    return
                lines = head.decode("latin-1").split("\r\n")
                parts = lines[0].split(" ")
                if len(parts) != 3:
                    await self._send(writer, 400, {"error": {"message": "malformed request line"}}, close=True)
                    return
                method, path, _ = parts
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        k, v = line.split(":", 1)
                        headers[k.strip().lower()] = v.strip()
                length = int(headers.get("content-length", "0") or 0)
                if length > _MAX_BODY_BYTES:
                    await self._send(writer, 413, {"error": {"message": "request body too large"}}, close=True)
                    return
                body = await asyncio.wait_for(reader.readexactly(length), _IDLE_TIMEOUT_S) if length else b""
                status, payload = await self._route(method, path.split("?", 1)[0], body)
                close = headers.get("connection", "").lower() == "close"
                await self._send(writer, status, payload, close=close)
                if close:
                    return
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.TimeoutError):
            return
        finally:
            writer.close()

    async def _send(self, writer: asyncio.StreamWriter, status: int, payload: dict, *, close: bool) -> None:
        data = json.dumps(payload).encode()
        reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 413: "Payload Too Large", 431: "Headers Too Large"}.get(status, "Error")
        head = (f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {len(data)}\r\n"
                f"Connection: {'close' if close else 'keep-alive'}\r\n\r\n")
        writer.write(head.encode() + data)
        await writer.drain()

    async def _route(self, method: str, path: str, body: bytes) -> tuple[int, dict]:
        path = path.rstrip("/")
        self.stats.by_path[path] = self.stats.by_path.get(path, 0) + 1
        if method == "GET" and path in ("/v1/models", "/models"):
            return 200, {"object": "list", "data": [{"id": self.model, "object": "model", "owned_by": "mpo_fast-simulated"}]}
        if method == "GET" and path in ("/health", "/v1/health"):
            return 200, {"status": "ok"}
        if method == "GET" and path == "/stats":
            return 200, asdict(self.stats)
        if method != "POST" or path not in ("/v1/chat/completions", "/v1/completions"):
            return 404, {"error": {"message": f"no route {method} {path}"}}
        try:
            req = json.loads(body)
            if not isinstance(req, dict):
                raise ValueError("the body is not a JSON object")
            if req.get("model") not in (None, self.model):
                return 404, {"error": {"message": f"model {req.get('model')!r} not served; GET /v1/models lists {self.model!r}"}}
            answer, prompt_tokens, completion_tokens = (
                self._chat(req) if path.endswith("chat/completions") else self._completion(req)
            )
        except (ValueError, KeyError, TypeError) as exc:
            self.stats.errors += 1
            return 400, {"error": {"message": f"bad request: {exc}"}}
        await self._serve_time(prompt_tokens, completion_tokens)
        answer["usage"] = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                           "total_tokens": prompt_tokens + completion_tokens}
        answer.update(id=f"sim-{self.stats.requests}", model=self.model, created=int(time.time()))
        return 200, answer

    async def _serve_time(self, prompt_tokens: int, completion_tokens: int) -> None:
        async with self._slots:
            self._running += 1
            if self._running == 1:
                self._busy_since = time.monotonic()
            self.stats.max_running = max(self.stats.max_running, self._running)
            try:
                await asyncio.sleep(self.latency.service_s(prompt_tokens, completion_tokens, self._running))
            finally:
                self._running -= 1
                if self._running == 0:
                    self.stats.busy_s += time.monotonic() - self._busy_since
        self.stats.requests += 1
        self.stats.completion_tokens += completion_tokens

    # ---- answers ------------------------------------------------------------------------------
    def _chat(self, req: dict) -> tuple[dict, int, int]:
        messages = req["messages"]
        if not isinstance(messages, list) or not messages:
            raise ValueError("messages must be a non-empty list")
        text = "\n".join(str(m.get("content", "")) for m in messages if isinstance(m, dict))
        max_tokens = int(req.get("max_tokens") or 256)
        schema = _request_schema(req)
        score_keys, string_keys = _schema_keys(schema) if schema else ([], [])
        flat_scores = bool(schema) and all(
            isinstance(v, dict) and v.get("type") in ("integer", "number", "string") for v in schema.get("properties", {}).values()
        )
        items = _items_from_prompt(text, score_keys or None) if (flat_scores or not schema) else []
        response = _graded_response(text)
        budget = self.latency.rationale_tokens if items else self.latency.free_text_tokens
        rationale = _justification(response, min(budget, max(1, max_tokens - 8 * len(items) - 4)))
        scores = [simulated_score(response, it.criterion, it.lo, it.hi) for it in items]
        if schema and not flat_scores:  # a structured answer that is not a score sheet (a rubric proposal)
            content = json.dumps(_json_from_schema(schema, text))
            pieces = [content]
        elif schema:
            obj = {key: rationale for key in string_keys}
            obj.update({it.name: s for it, s in zip(items, scores)})
            content = json.dumps(obj)
            pieces = [content]
        else:
            pieces = [rationale + "\n"]
            for it, s in zip(items, scores):
                pieces += [f"<{it.name}>", str(s), f"</{it.name}>\n"]
            content = "".join(pieces).rstrip("\n")
        completion_tokens = _tokens(content)
        finish = "stop"
        if completion_tokens > max_tokens:
            content = content[: int(max_tokens * _CHARS_PER_TOKEN)]
            completion_tokens, finish = max_tokens, "length"
        choice = {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish}
        if req.get("logprobs"):
            k = int(req.get("top_logprobs") or 1)
            entries = []
            for piece in pieces:
                if piece.isdigit():  # one token per digit, as SmolLM2 and Qwen2.5 tokenise numbers
                    target = int(piece)
                    for j, ch in enumerate(piece):
                        top = _digit_top(piece[:j], target, k)
                        entries.append({"token": ch, "logprob": top.get(ch, -20.0), "bytes": list(ch.encode()),
                                        "top_logprobs": [{"token": t, "logprob": lp, "bytes": list(t.encode())} for t, lp in top.items()]})
                else:
                    entries.append({"token": piece, "logprob": -0.05, "bytes": list(piece.encode()),
                                    "top_logprobs": [{"token": piece, "logprob": -0.05, "bytes": list(piece.encode())}]})
            choice["logprobs"] = {"content": entries}
        return {"object": "chat.completion", "choices": [choice]}, _tokens(text), completion_tokens

    def _completion(self, req: dict) -> tuple[dict, int, int]:
        prompt = req["prompt"]
        if not isinstance(prompt, str):
            raise ValueError("this simulated judge scores text prompts only")
        items = _items_from_prompt(prompt, None)
        # The prefill ends inside the answer: `...<NAME>` + what was written of the number so far.
        m = re.search(r"<([A-Za-z][\w.-]{0,63})>([0-9]{0,3})$", prompt)
        if m is None or not items:
            raise ValueError("the prompt does not end in an open score tag of the judge's format")
        name, written = m.group(1), m.group(2)
        item = next((it for it in items if it.name == name), items[0])
        target = simulated_score(_graded_response(prompt), item.criterion, item.lo, item.hi)
        top = _digit_top(written, target, int(req.get("logprobs") or 1))
        best = max(top, key=top.get)
        choice = {"index": 0, "text": best, "finish_reason": "length",
                  "logprobs": {"tokens": [best], "token_logprobs": [top[best]], "top_logprobs": [top], "text_offset": [len(prompt)]}}
        return {"object": "text_completion", "choices": [choice]}, _tokens(prompt), 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mpo_fast.testing.judge_server", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", type=int, default=0, help="0 picks a free port")
    p.add_argument("--port-file", type=Path, help="write the bound port here once listening")
    p.add_argument("--model", default="simulated-judge")
    for f in LatencyModel.__dataclass_fields__.values():
        p.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default)
    args = p.parse_args(argv)
    latency = LatencyModel(**{k: getattr(args, k) for k in LatencyModel.__dataclass_fields__})
    server = JudgeServer(latency, model=args.model, port=args.port)
    ready = threading.Event()

    async def run():
        task = asyncio.create_task(server.serve(ready))
        while not ready.is_set():
            await asyncio.sleep(0.01)
        if args.port_file:
            tmp = args.port_file.with_suffix(".tmp")
            tmp.write_text(str(server.port))
            tmp.replace(args.port_file)
        print(f"simulated judge on {server.base_url}", flush=True)
        await task

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
