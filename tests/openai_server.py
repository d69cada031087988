"""A test endpoint: the project's OpenAI-compatible server (rewatch_jax/serve/app.py) on loopback over
a backend whose reply to every request is `answer(prompt_text)` (the text parts of the messages
joined by newlines). Faults assigned to `faults` are served first, one a request (app.FAULTS); it
records the prompts it answered, the request headers and the most requests in flight."""

from __future__ import annotations

import contextlib

from rewatch_jax.serve.app import Faults, create_app, serving


class _Answer:
  def __init__(self, answer, models):
    self.answer, self._models, self.answered = answer, list(models), []

  def models(self) -> list[str]:
    return self._models

  def complete(self, model: str, messages: list[dict], params: dict) -> str:
    prompt = "\n".join(m["content"] for m in messages if isinstance(m.get("content"), str))
    self.answered.append(prompt)
    return self.answer(prompt)


class FakeEndpoint:
  def __init__(self, answer, models=("judge",), slow_seconds=2.0, retry_after="0.2"):
    self.backend = _Answer(answer, models)
    self.state = Faults(slow_seconds=slow_seconds, retry_after=float(retry_after))
    self.headers: list[dict] = []
    app = create_app(self.backend, self.state)

    async def recording(scope, receive, send):  # the request headers, for the API-key test
      if scope["type"] == "http" and scope["method"] == "POST":
        self.headers.append({k.decode().title(): v.decode() for k, v in scope["headers"]})
      await app(scope, receive, send)

    self._serving = contextlib.ExitStack()
    self._app = recording
    self.base_url = ""

  @property
  def faults(self) -> list[str]:
    return self.state.queue

  @faults.setter
  def faults(self, kinds: list[str]) -> None:
    self.state.queue[:] = kinds

  @property
  def answered(self) -> list[str]:
    return self.backend.answered

  @property
  def max_in_flight(self) -> int:
    return self.state.max_in_flight

  def __enter__(self):
    self.base_url = self._serving.enter_context(serving(self._app))
    return self

  def __exit__(self, *exc):
    self._serving.close()
