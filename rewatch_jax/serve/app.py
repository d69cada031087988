"""An OpenAI-compatible chat-completions server (FastAPI + uvicorn, vLLM's stack) over a `Backend`.

`create_app(backend, ...)` serves `GET /v1/models` and `POST /v1/chat/completions` (non-streaming)
for any object with `models()` and `complete(model, messages, params) -> str`: the toy world's
oracle (`data_synthesis.oracle`) today, our trained model through the sampler later. Usage is
counted as characters / 4 for text and `IMAGE_TOKENS` per image.

For tests, benchmarks and offline runs the server can misbehave on purpose, like a real endpoint
under load (`Faults`): a fixed `latency` per request, a requests-per-minute limit it enforces with
429 + Retry-After (and OpenAI's `x-ratelimit-*` headers on every answer), faults drawn at random at
`fault_rate`, and faults queued through `POST /v1/faults {"faults": [...]}`, served one a request:
"429", "500", "503", "slow" (answers after `slow_seconds`), "drop" (the connection closes before
the body), "truncated" (half the JSON body), "malformed" (JSON without `choices`),
"content_filter" (finish_reason content_filter). `GET /v1/stats` counts the chat requests, those
refused by the rate limit, the faults, the statuses, the answers without a fault, and the most
requests in flight.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import random
import threading
import time
from typing import Any, Protocol

import fastapi
import pydantic
import uvicorn
from fastapi.concurrency import run_in_threadpool

FAULTS = ("429", "500", "503", "slow", "drop", "truncated", "malformed", "content_filter")
IMAGE_TOKENS = 256  # usage counted per image (an estimate: the endpoint's own count is what bills)


class Backend(Protocol):
  def models(self) -> list[str]: ...

  def complete(self, model: str, messages: list[dict], params: dict[str, Any]) -> str: ...


class ChatRequest(pydantic.BaseModel):
  model_config = pydantic.ConfigDict(extra="allow")  # sampling parameters, response_format, ...
  model: str
  messages: list[dict[str, Any]]
  stream: bool = False


class Faults:
  """What the server does wrong, and its counts (see the module docstring)."""

  def __init__(self, latency: float = 0.0, requests_per_minute: float = 0.0, fault_rate: float = 0.0,
               kinds: tuple[str, ...] = FAULTS, slow_seconds: float = 5.0, seed: int = 0, retry_after: float = 0.2):
    unknown = set(kinds) - set(FAULTS)
    if unknown or not 0 <= fault_rate <= 1:
      raise ValueError(f"fault kinds must be among {FAULTS} (got {sorted(unknown)}), fault_rate in [0, 1]")
    self.latency, self.rpm, self.rate, self.kinds = latency, requests_per_minute, fault_rate, tuple(kinds)
    self.slow_seconds, self.retry_after = slow_seconds, retry_after  # (retry_after: of an injected 429)
    self.in_flight = self.max_in_flight = 0
    self.queue: list[str] = []
    self.rng = random.Random(seed)
    self.window: collections.deque[float] = collections.deque()  # times of admitted requests, last minute
    self.stats: collections.Counter = collections.Counter()
    self.lock = threading.Lock()

  def next_fault(self) -> str:
    with self.lock:
      if self.queue:
        return self.queue.pop(0)
      return self.rng.choice(self.kinds) if self.rate and self.rng.random() < self.rate else ""

  def admit(self) -> float | None:
    """None if a request may go ahead under the rate limit, else the seconds until one may."""
    with self.lock:
      now = time.monotonic()
      while self.window and self.window[0] <= now - 60:
        self.window.popleft()
      if self.rpm and len(self.window) >= self.rpm:
        return self.window[0] + 60 - now
      self.window.append(now)
      return None

  def limit_headers(self) -> list[tuple[bytes, bytes]]:
    if not self.rpm:
      return []
    with self.lock:
      remaining = max(0, int(self.rpm) - len(self.window))
    return [(b"x-ratelimit-limit-requests", str(int(self.rpm)).encode()),
            (b"x-ratelimit-remaining-requests", str(remaining).encode())]


class _Misbehave:
  """ASGI middleware applying `Faults` to chat completions (pure ASGI: a dropped connection or a
  truncated body cannot be written with a FastAPI response)."""

  def __init__(self, app, faults: Faults):
    self.app, self.faults = app, faults

  async def __call__(self, scope, receive, send):
    if scope["type"] != "http" or scope["method"] != "POST" or not scope["path"].endswith("/chat/completions"):
      return await self.app(scope, receive, send)
    f = self.faults
    with f.lock:
      f.in_flight += 1
      f.max_in_flight = max(f.max_in_flight, f.in_flight)
    try:
      await self._serve(scope, receive, send)
    finally:
      with f.lock:
        f.in_flight -= 1

  async def _serve(self, scope, receive, send):
    f = self.faults
    if f.latency:
      await asyncio.sleep(f.latency)
    wait = f.admit()
    fault = "429" if wait is not None else f.next_fault()
    f.stats["requests"] += 1
    if wait is not None:
      f.stats["rate_limited"] += 1
    elif fault:
      f.stats[f"fault_{fault}"] += 1
    if fault in ("429", "500", "503"):
      headers = [(b"retry-after", f"{f.retry_after if wait is None else wait:.3f}".encode())] if fault == "429" else []
      return await _send(send, int(fault), {"error": {"message": f"injected {fault}", "type": "server"}}, headers)
    if fault == "drop":  # headers promising a body that never comes; uvicorn then closes the connection
      await send({"type": "http.response.start", "status": 200,
                  "headers": [(b"content-type", b"application/json"), (b"content-length", b"4096")]})
      return None
    if fault == "slow":
      await asyncio.sleep(f.slow_seconds)
    start, body = {}, []

    async def keep(message):
      (start.update if message["type"] == "http.response.start" else body.append)(message)

    await self.app(scope, receive, keep)
    f.stats[f"status_{start.get('status')}"] += 1
    if start.get("status") == 200 and not fault:
      f.stats["answered"] += 1
    data = b"".join(m.get("body", b"") for m in body)
    if start.get("status") == 200 and fault in ("truncated", "malformed", "content_filter"):
      if fault == "truncated":
        data = data[:len(data) // 2]
      elif fault == "malformed":
        data = json.dumps({"id": "x", "object": "chat.completion"}).encode()
      else:
        reply = json.loads(data)
        reply["choices"][0]["finish_reason"] = "content_filter"
        data = json.dumps(reply).encode()
    headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
    await send({"type": "http.response.start", "status": start.get("status", 500),
                "headers": headers + f.limit_headers() + [(b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})


async def _send(send, status: int, payload: dict, headers=()):
  data = json.dumps(payload).encode()
  await send({"type": "http.response.start", "status": status,
              "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
                          *headers]})
  await send({"type": "http.response.body", "body": data})


def _error(status: int, message: str, code: str) -> fastapi.responses.JSONResponse:
  return fastapi.responses.JSONResponse({"error": {"message": message, "type": "invalid_request_error",
                                                   "code": code}}, status_code=status)


def count_tokens(messages: list[dict]) -> int:
  """Prompt usage: text characters / 4 and IMAGE_TOKENS per image part."""
  n = 0
  for m in messages:
    content = m.get("content")
    parts = [{"type": "text", "text": content}] if isinstance(content, str) else content or []
    for p in parts:
      n += len(p.get("text", "")) // 4 if p.get("type") == "text" else IMAGE_TOKENS
  return n


def create_app(backend: Backend, faults: Faults | None = None):
  """The ASGI app serving `backend` (see the module docstring)."""
  faults = faults or Faults()
  app = fastapi.FastAPI(title="rewatch-jax OpenAI-compatible server")

  @app.get("/v1/models")
  def models():
    return {"object": "list", "data": [{"id": m, "object": "model", "owned_by": "rewatch-jax"}
                                       for m in backend.models()]}

  @app.post("/v1/chat/completions")
  async def chat(request: ChatRequest):
    if request.stream:
      return _error(400, "streaming is not supported by this server", "unsupported")
    if request.model not in backend.models():
      return _error(404, f"The model `{request.model}` does not exist on this server", "model_not_found")
    params = request.model_extra or {}
    try:
      text = await run_in_threadpool(backend.complete, request.model, request.messages, params)
    except ValueError as e:  # a request the backend cannot answer
      return _error(400, str(e), "bad_request")
    return {"id": f"chatcmpl-{random.getrandbits(64):016x}", "object": "chat.completion", "created": int(time.time()),
            "model": request.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": count_tokens(request.messages), "completion_tokens": len(text) // 4,
                      "total_tokens": count_tokens(request.messages) + len(text) // 4}}

  @app.post("/v1/faults")
  def queue_faults(body: dict[str, list[str]]):
    bad = [k for k in body.get("faults", []) if k not in FAULTS]
    if bad:
      return _error(400, f"unknown faults {bad}; known: {FAULTS}", "bad_request")
    with faults.lock:
      faults.queue.extend(body.get("faults", []))
    return {"queued": len(faults.queue)}

  @app.get("/v1/stats")
  def stats():
    return dict(faults.stats, max_in_flight=faults.max_in_flight)

  return _Misbehave(app, faults)


@contextlib.contextmanager
def serving(app, host: str = "127.0.0.1", port: int = 0):
  """Run `app` with uvicorn in a background thread; yields the base URL (…/v1)."""
  server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", timeout_keep_alive=30))
  thread = threading.Thread(target=server.run, daemon=True)
  thread.start()
  deadline = time.monotonic() + 30
  while not server.started:
    if not thread.is_alive() or time.monotonic() > deadline:
      raise RuntimeError(f"the server did not start on {host}:{port}")
    time.sleep(0.01)
  bound = server.servers[0].sockets[0].getsockname()[1]
  try:
    yield f"http://{host}:{bound}/v1"
  finally:
    server.should_exit = True
    thread.join(timeout=10)
