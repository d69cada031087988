"""One asynchronous client for any OpenAI-compatible chat-completions endpoint (vLLM, SGLang, a
cloud API), shared by the RL judges, the evaluation judge and data synthesis.

* Many requests at once (`HostedClient.complete`, or `run` from synchronous code), at most
  `max_concurrency` in flight; the allowed concurrency halves on a 429 (at most once a second) and
  grows back by one per its own number of successes, as TCP's congestion window (it learns the
  server's limit).
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
  as one JSON file, written atomically, so a rerun pays for nothing it already has; a request
  made while the same one is in flight waits for its answer instead of paying again.
* `session()`: one connection pool, rate limits and concurrency bound shared by many `complete`
  calls (the concurrent work items of a synthesis stage); the requests-per-minute pace drops to
  just under a lower limit the endpoint advertises (`x-ratelimit-limit-requests`).
* The API key is read from the environment variable `api_key_env` only and is part of no hash, file
  or log line.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
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
  learn_rate_limits: bool = True  # pace under the endpoint's advertised requests-per-minute limit


@dataclasses.dataclass(frozen=True)
class Request:
  model: str
  messages: list[dict]
  params: dict = dataclasses.field(default_factory=dict)  # temperature, max_tokens, response_format, ...
  tag: str = ""  # who asks (a synthesis stage): errors are counted per tag too; not part of the key

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
  """A token bucket refilled at `per_minute` a minute, holding at most `capacity` (a minute's worth)."""

  def __init__(self, per_minute: float):
    self.rate, self.level, self.at = per_minute / 60.0, per_minute, time.monotonic()
    self.capacity = per_minute

  async def take(self, amount: float) -> None:
    if self.rate <= 0:
      return
    amount = min(amount, self.capacity)
    while True:
      now = time.monotonic()
      self.level = min(self.capacity, self.level + (now - self.at) * self.rate)
      self.at = now
      if self.level >= amount:
        self.level -= amount
        return
      await asyncio.sleep((amount - self.level) / self.rate)


@dataclasses.dataclass
class _Session:
  http: httpx.AsyncClient
  rpm: _Bucket
  tpm: _Bucket
  active: asyncio.Condition
  in_flight: int = 0


class HostedClient:
  """See the module docstring. One instance per endpoint; `stats` accumulate over its calls."""

  def __init__(self, config: ClientConfig):
    if config.max_concurrency < 1 or config.max_retries < 0 or config.timeout <= 0:
      raise ValueError(f"need max_concurrency >= 1, max_retries >= 0 and timeout > 0: {config}")
    self.config = config
    self.stats: collections.Counter = collections.Counter()
    self.errors_by_tag: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    self._key = os.environ.get(config.api_key_env, "") if config.api_key_env else ""
    self._limit = config.max_concurrency  # the adaptive concurrency
    self._successes = 0
    self._session: _Session | None = None
    self._in_flight: dict[str, asyncio.Future] = {}
    self._last_cut = -1e9  # when the concurrency was last halved

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

  @contextlib.asynccontextmanager
  async def session(self):
    """One connection pool, rate limits and concurrency bound shared by every `complete` call made
    inside (many small calls from concurrent work items behave as one batch)."""
    if self._session is not None:
      yield self
      return
    async with httpx.AsyncClient(timeout=self.config.timeout, headers=self._headers(),
                                 limits=httpx.Limits(max_connections=self.config.max_concurrency)) as http:
      self._session = _Session(http, _Bucket(self.config.requests_per_minute),
                               _Bucket(self.config.tokens_per_minute), asyncio.Condition())
      try:
        yield self
      finally:
        self._session = None

  async def complete(self, requests: Sequence[Request]) -> list[Completion | HostedError]:
    async with self.session():
      return list(await asyncio.gather(*(self._one(r) for r in requests)))

  async def _one(self, req: Request) -> Completion | HostedError:
    """One request: from the cache, or joining the same request in flight, or sent."""
    cached = self._cached(req)
    if cached is not None:
      self.stats["cache_hits"] += 1
      return cached
    key = req.key()
    if key in self._in_flight:  # the same request from another work item: paid once
      self.stats["cache_hits"] += 1
      result = await asyncio.shield(self._in_flight[key])
      return dataclasses.replace(result, cached=True) if isinstance(result, Completion) else result
    self._in_flight[key] = asyncio.get_running_loop().create_future()
    try:
      result = await self._send(req)
    except BaseException as e:
      self._in_flight.pop(key).set_exception(e)
      raise
    self._in_flight.pop(key).set_result(result)
    return result

  async def _send(self, req: Request) -> Completion | HostedError:
    s = self._session
    for attempt in range(self.config.max_retries + 1):
      async with s.active:
        await s.active.wait_for(lambda: s.in_flight < self._limit)
        s.in_flight += 1
      try:
        await s.rpm.take(1)
        await s.tpm.take(_estimate_tokens(req))
        out = await self._post(s.http, req)
      except HostedError as e:
        out = e
      finally:  # (a request backing off holds no slot)
        async with s.active:
          s.in_flight -= 1
          s.active.notify_all()
      if isinstance(out, Completion):
        self._successes += 1
        if self._successes >= self._limit and self._limit < self.config.max_concurrency:  # +1 a round trip
          self._limit, self._successes = self._limit + 1, 0
        self.stats["requests"] += 1
        self.stats["prompt_tokens"] += out.prompt_tokens
        self.stats["completion_tokens"] += out.completion_tokens
        self._store(req, out)
        return out
      self.stats[f"error_{out.kind}"] += 1
      self.errors_by_tag[req.tag][out.kind] += 1
      if out.kind == "rate_limit" and time.monotonic() - self._last_cut >= 1.0:
        # halved once a second at most, as TCP once a round trip: the 429s of one burst are one signal
        self._limit, self._successes = max(1, self._limit // 2), 0
        self._last_cut = time.monotonic()
      if out.kind not in _RETRYABLE or attempt == self.config.max_retries:
        self.stats["failed"] += 1
        return out
      self.stats["retries"] += 1
      delay = random.uniform(0, min(self.config.max_backoff, self.config.backoff * 2 ** attempt))
      await asyncio.sleep(max(delay, out.retry_after or 0.0))
    raise AssertionError("unreachable")

  async def _post(self, http: httpx.AsyncClient, req: Request) -> Completion:
    try:
      r = await http.post(self._url("chat/completions"), json=dict(model=req.model, messages=req.messages,
                                                                   **req.params))
    except httpx.TimeoutException as e:
      raise HostedError("timeout", str(e) or type(e).__name__) from None
    except httpx.TransportError as e:  # refused, reset, dropped mid-body
      raise HostedError("connection", str(e) or type(e).__name__) from None
    self._learn(r.headers.get("x-ratelimit-limit-requests"))
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

  def _learn(self, limit: str | None) -> None:
    """Pace requests a little under the limit the endpoint advertises (OpenAI's
    x-ratelimit-limit-requests header), when it is lower than the configured one: a client that
    keeps under the limit gets no 429s, where one that finds it by hitting it loses a retry each."""
    if not limit or not self.config.learn_rate_limits or self._session is None:
      return
    try:
      per_minute = float(limit) * 0.98
    except ValueError:
      return
    bucket = self._session.rpm
    if per_minute > 0 and (bucket.rate <= 0 or per_minute / 60 < bucket.rate - 1e-9):
      bucket.rate, bucket.capacity = per_minute / 60, 1.0
      bucket.level = min(bucket.level, bucket.capacity)

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

