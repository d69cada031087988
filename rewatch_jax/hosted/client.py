"""One asynchronous client for any OpenAI-compatible chat-completions endpoint (vLLM, SGLang, a
cloud API), shared by the RL judges, the evaluation judge and data synthesis.

* Many requests at once (`HostedClient.complete`, or `run` from synchronous code), at most
  `max_concurrency` in flight; the allowed concurrency halves on a 429 and grows back by one every
  `max_concurrency` successes (it learns the server's limit).
* Client-side limits: `requests_per_minute` and `tokens_per_minute` (prompt characters / 4 +
  max_tokens, an estimate), token buckets that a burst cannot overdraw.
* Retries with exponential backoff and full jitter, honouring `Retry-After`, up to `max_retries`,
  for what a retry can fix: rate limits, timeouts, 5xx, dropped connections, truncated or
  malformed bodies. A 4xx (a model the endpoint does not serve, a bad request) and a content
  filter are final.
* Errors are classified (`ERROR_KINDS`) and counted in `stats`, with requests, retries, cache hits
  and tokens; a request that fails for good returns a `HostedError` in its place, never raises
  out of a batch.
* A content-hash cache (`cache_dir`): the answer to (model, messages, sampling parameters) is kept
  as one JSON file, written atomically, so a rerun pays for nothing it already has. The API key is
  read from the environment variable `api_key_env` only and is part of no hash, file or log line.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import email.utils
import hashlib
import json
import logging
import os
import random
import tempfile
import time
from collections.abc import Sequence

import httpx

log = logging.getLogger(__name__)

ERROR_KINDS = ("rate_limit", "timeout", "server_error", "connection", "truncated", "content_filter",
               "invalid_output", "client_error")
_RETRYABLE = {"rate_limit", "timeout", "server_error", "connection", "truncated", "invalid_output"}


class HostedError(Exception):
  """A request that failed; `kind` is one of ERROR_KINDS."""

  def __init__(self, kind: str, message: str, retry_after: float | None = None):
    super().__init__(f"{kind}: {message}")
    self.kind, self.retry_after = kind, retry_after


@dataclasses.dataclass(frozen=True)
class ClientConfig:
  base_url: str  # e.g. http://localhost:8000/v1
  api_key_env: str = "OPENAI_API_KEY"  # the variable holding the key ("" or unset: no key sent)
  max_concurrency: int = 16
  requests_per_minute: float = 0.0  # 0: no client-side limit
  tokens_per_minute: float = 0.0
  timeout: float = 60.0  # seconds a request may take
  max_retries: int = 6
  backoff: float = 1.0  # the first retry's delay bound (s), doubled each retry, with full jitter
  max_backoff: float = 60.0
  cache_dir: str = ""  # "": no cache


@dataclasses.dataclass(frozen=True)
class Request:
  model: str
  messages: list[dict]
  params: dict = dataclasses.field(default_factory=dict)  # temperature, max_tokens, response_format, ...

  def key(self) -> str:
    """The cache key: a hash of what decides the answer (never the API key)."""
    blob = json.dumps(dict(model=self.model, messages=self.messages, params=self.params), sort_keys=True,
                      ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


@dataclasses.dataclass(frozen=True)
class Completion:
  text: str
  finish_reason: str
  prompt_tokens: int
  completion_tokens: int
  cached: bool = False


class _Bucket:
  """A token bucket refilled at `per_minute` a minute, holding at most a minute's worth."""

  def __init__(self, per_minute: float):
    self.rate, self.level, self.at = per_minute / 60.0, per_minute, time.monotonic()

  async def take(self, amount: float) -> None:
    if self.rate <= 0:
      return
    amount = min(amount, self.rate * 60)
    while True:
      now = time.monotonic()
      self.level = min(self.rate * 60, self.level + (now - self.at) * self.rate)
      self.at = now
      if self.level >= amount:
        self.level -= amount
        return
      await asyncio.sleep((amount - self.level) / self.rate)


class HostedClient:
  """See the module docstring. One instance per endpoint; `stats` accumulate over its calls."""

  def __init__(self, config: ClientConfig):
    if config.max_concurrency < 1 or config.max_retries < 0 or config.timeout <= 0:
      raise ValueError(f"need max_concurrency >= 1, max_retries >= 0 and timeout > 0: {config}")
    self.config = config
    self.stats: collections.Counter = collections.Counter()
    self._key = os.environ.get(config.api_key_env, "") if config.api_key_env else ""
    self._limit = config.max_concurrency  # the adaptive concurrency
    self._successes = 0

  # ---- synchronous entry points ----

  def run(self, requests: Sequence[Request]) -> list[Completion | HostedError]:
    """Every request's completion (or its HostedError), in order, from synchronous code."""
    return asyncio.run(self.complete(requests))

  def models(self) -> list[str]:
    """The model names the endpoint serves (GET /models): a start-up check that fails fast."""
    try:
      r = httpx.get(self._url("models"), headers=self._headers(), timeout=self.config.timeout)
      r.raise_for_status()
      return [m["id"] for m in r.json()["data"]]
    except (httpx.HTTPError, KeyError, ValueError) as e:
      raise HostedError("connection", f"{self.config.base_url} does not answer GET /models: {e}") from None

  # ---- asynchronous ----

  async def complete(self, requests: Sequence[Request]) -> list[Completion | HostedError]:
    rpm, tpm = _Bucket(self.config.requests_per_minute), _Bucket(self.config.tokens_per_minute)
    active = asyncio.Condition()
    state = {"active": 0}
    async with httpx.AsyncClient(timeout=self.config.timeout, headers=self._headers()) as http:
      async def one(req: Request):
        cached = self._cached(req)
        if cached is not None:
          self.stats["cache_hits"] += 1
          return cached
        for attempt in range(self.config.max_retries + 1):
          async with active:
            await active.wait_for(lambda: state["active"] < self._limit)
            state["active"] += 1
          try:
            await rpm.take(1)
            await tpm.take(_estimate_tokens(req))
            out = await self._post(http, req)
          except HostedError as e:
            self.stats[f"error_{e.kind}"] += 1
            if e.kind == "rate_limit":
              self._limit, self._successes = max(1, self._limit // 2), 0
            if e.kind not in _RETRYABLE or attempt == self.config.max_retries:
              self.stats["failed"] += 1
              return e
            self.stats["retries"] += 1
            delay = random.uniform(0, min(self.config.max_backoff, self.config.backoff * 2 ** attempt))
            await asyncio.sleep(max(delay, e.retry_after or 0.0))
            continue
          finally:
            async with active:
              state["active"] -= 1
              active.notify_all()
          self._successes += 1
          if self._successes >= self.config.max_concurrency and self._limit < self.config.max_concurrency:
            self._limit, self._successes = self._limit + 1, 0
          self.stats["requests"] += 1
          self.stats["prompt_tokens"] += out.prompt_tokens
          self.stats["completion_tokens"] += out.completion_tokens
          self._store(req, out)
          return out
        raise AssertionError("unreachable")
      return list(await asyncio.gather(*(one(r) for r in requests)))

  async def _post(self, http: httpx.AsyncClient, req: Request) -> Completion:
    try:
      r = await http.post(self._url("chat/completions"), json=dict(model=req.model, messages=req.messages,
                                                                   **req.params))
    except httpx.TimeoutException as e:
      raise HostedError("timeout", str(e) or type(e).__name__) from None
    except httpx.TransportError as e:  # refused, reset, dropped mid-body
      raise HostedError("connection", str(e) or type(e).__name__) from None
    if r.status_code == 429:
      raise HostedError("rate_limit", r.text[:200], _retry_after(r.headers.get("retry-after")))
    if r.status_code >= 500:
      raise HostedError("server_error", f"{r.status_code} {r.text[:200]}", _retry_after(r.headers.get("retry-after")))
    if r.status_code >= 400:
      raise HostedError("client_error", f"{r.status_code} {r.text[:300]}")
    try:
      body = r.json()
    except ValueError:
      raise HostedError("truncated", f"a body that is not JSON: {r.text[:120]!r}") from None
    try:
      choice = body["choices"][0]
      text, finish = choice["message"]["content"], choice.get("finish_reason") or "stop"
      usage = body.get("usage") or {}
    except (KeyError, IndexError, TypeError):
      raise HostedError("invalid_output", f"no choices[0].message.content in {str(body)[:120]}") from None
    if finish == "content_filter":
      raise HostedError("content_filter", "the endpoint filtered the answer")
    if not isinstance(text, str):
      raise HostedError("invalid_output", f"content is {type(text).__name__}")
    return Completion(text, finish, int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0)))

  # ---- helpers ----

  def _url(self, path: str) -> str:
    return self.config.base_url.rstrip("/") + "/" + path

  def _headers(self) -> dict[str, str]:
    return {"Authorization": f"Bearer {self._key}"} if self._key else {}

  def _path(self, req: Request) -> str:
    key = req.key()
    return os.path.join(self.config.cache_dir, key[:2], key + ".json")

  def _cached(self, req: Request) -> Completion | None:
    if not self.config.cache_dir or not os.path.exists(self._path(req)):
      return None
    with open(self._path(req)) as f:
      return dataclasses.replace(Completion(**json.load(f)), cached=True)

  def _store(self, req: Request, out: Completion) -> None:
    if not self.config.cache_dir:
      return
    path = self._path(req)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".tmp")
    with os.fdopen(fd, "w") as f:
      json.dump(dataclasses.asdict(out), f)
    os.replace(tmp, path)


def _estimate_tokens(req: Request) -> float:
  chars = sum(len(m.get("content", "")) if isinstance(m.get("content"), str) else 1000 for m in req.messages)
  return chars / 4 + float(req.params.get("max_tokens", 256))


def _retry_after(value: str | None) -> float | None:
  """Seconds from a Retry-After header (seconds, or an HTTP date)."""
  if not value:
    return None
  try:
    return max(0.0, float(value))
  except ValueError:
    try:
      return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
      return None


def completion_text(result: Completion | HostedError) -> str | None:
  return result.text if isinstance(result, Completion) else None

