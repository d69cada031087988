"""An OpenAI-compatible chat-completions server on loopback for tests (a real HTTP server, stdlib
threads): `answer(prompt_text) -> str` makes each reply; faults queued in `faults` are served first,
one a request: "429" (with Retry-After), "500", "503", "slow" (longer than the client's timeout),
"drop" (the connection closed without a reply), "truncated" (half a JSON body), "malformed" (JSON
without choices), "content_filter". It records the requests it answered and the most in flight."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeEndpoint:
  def __init__(self, answer, models=("judge",), slow_seconds=2.0, retry_after="0.2"):
    self.answer, self.models, self.slow, self.retry_after = answer, list(models), slow_seconds, retry_after
    self.faults: list[str] = []
    self.answered, self.headers = [], []
    self.in_flight = self.max_in_flight = 0
    self.lock = threading.Lock()
    endpoint = self

    class Handler(BaseHTTPRequestHandler):
      protocol_version = "HTTP/1.1"

      def log_message(self, *args):
        pass

      def _send(self, status: int, body: bytes, headers=()):
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for k, v in headers:
          self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

      def do_GET(self):
        if self.path.rstrip("/").endswith("/models"):
          self._send(200, json.dumps({"object": "list", "data": [{"id": m} for m in endpoint.models]}).encode())
        else:
          self._send(404, b'{"error": "not found"}')

      def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with endpoint.lock:
          fault = endpoint.faults.pop(0) if endpoint.faults else ""
          endpoint.in_flight += 1
          endpoint.max_in_flight = max(endpoint.max_in_flight, endpoint.in_flight)
          endpoint.headers.append(dict(self.headers))
        try:
          self._reply(body, fault)
        finally:
          with endpoint.lock:
            endpoint.in_flight -= 1

      def _reply(self, body, fault):
        if fault == "429":
          return self._send(429, b'{"error": "rate limited"}', [("Retry-After", endpoint.retry_after)])
        if fault in ("500", "503"):
          return self._send(int(fault), b'{"error": "server"}')
        if fault == "drop":
          self.close_connection = True
          return None
        if fault == "slow":
          time.sleep(endpoint.slow)
        if body.get("model") not in endpoint.models:
          return self._send(404, json.dumps({"error": f"model {body.get('model')} not served"}).encode())
        time.sleep(0.01)  # (so that concurrent requests overlap)
        prompt = "\n".join(m["content"] for m in body["messages"] if isinstance(m.get("content"), str))
        text = endpoint.answer(prompt)
        reply = {"id": "x", "object": "chat.completion", "model": body["model"],
                 "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                              "finish_reason": "content_filter" if fault == "content_filter" else "stop"}],
                 "usage": {"prompt_tokens": len(prompt) // 4, "completion_tokens": len(text) // 4}}
        if fault == "malformed":
          reply = {"id": "x", "object": "chat.completion"}
        data = json.dumps(reply).encode()
        if fault == "truncated":
          data = data[:len(data) // 2]
        if fault == "":
          with endpoint.lock:
            endpoint.answered.append(prompt)
        return self._send(200, data)

    self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    self.server.daemon_threads = True
    self.server.handle_error = lambda *args: None  # (a client that timed out has gone: a broken pipe)
    self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

  def __enter__(self):
    threading.Thread(target=self.server.serve_forever, daemon=True).start()
    return self

  def __exit__(self, *exc):
    self.server.shutdown()
    self.server.server_close()
