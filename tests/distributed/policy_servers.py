"""Scripted OpenAI-compatible policy servers on localhost, shared by every rank of a distributed
test (real HTTP, one thread each): /v1/completions answers vLLM-style token ids, the runtime LoRA
endpoints answer "Success", and every request is recorded with the adapter it named."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class PolicyServer:
    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.loaded: list[str] = []  # the adapters loaded now, in load order
        lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                path = self.path
                with lock:
                    owner.requests.append({"path": path, **body})
                    if path.endswith("/load_lora_adapter"):
                        owner.loaded.append(body["lora_name"])
                    elif path.endswith("/unload_lora_adapter"):
                        owner.loaded.remove(body["lora_name"])
                if path.endswith("_lora_adapter"):
                    self._send(200, b"Success", "text/plain")
                    return
                if body["model"] not in ("policy", *owner.loaded):
                    self._send(404, json.dumps({"error": f"model {body['model']} not loaded"}).encode(), "application/json")
                    return
                choices = [{"index": k, "text": "ok", "finish_reason": "stop", "token_ids": [5 + k, 2],
                            "logprobs": {"tokens": [str(5 + k), "2"], "token_logprobs": [-0.5, -0.1]}}
                           for k in range(body["n"])]
                self._send(200, json.dumps({"choices": choices}).encode(), "application/json")

            def _send(self, status, payload, kind):
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
