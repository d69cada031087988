"""The hosted-model client against a real OpenAI-compatible server on loopback: concurrency, every
fault class survived with the same answers as a clean run, final errors returned not raised,
Retry-After, the cache (a rerun sends nothing), the API key only in the Authorization header; and
the paper's judges (HostedJudge) driving the O&R reward."""

import math
import os
import time

import pytest

from rewatch_jax.hosted import ClientConfig, HostedClient, HostedError, Request
from rewatch_jax.rewards import HostedJudge, RewardConfig, Sample, reward
from tests.openai_server import FakeEndpoint
from tests.test_rewards import CAPTION, GOOD, OPTIONS, qa


def echo(prompt: str) -> str:
  return f"echo: {prompt}"


def requests(n):
  return [Request("judge", [{"role": "user", "content": f"question {i}"}], {"temperature": 0.0, "max_tokens": 8})
          for i in range(n)]


def client(endpoint, **kw):
  kw.setdefault("backoff", 0.05)
  return HostedClient(ClientConfig(base_url=endpoint.base_url, **kw))


def test_many_requests_at_once_within_the_concurrency_bound():
  with FakeEndpoint(echo) as endpoint:
    c = client(endpoint, max_concurrency=4)
    out = c.run(requests(24))
  assert [o.text for o in out] == [f"echo: question {i}" for i in range(24)]
  assert 2 <= endpoint.max_in_flight <= 4 and c.stats["requests"] == 24 and c.stats["prompt_tokens"] > 0


def test_every_fault_class_is_survived_with_the_clean_answers():
  faults = ["429", "500", "503", "drop", "truncated", "malformed", "slow"]
  with FakeEndpoint(echo, slow_seconds=1.5) as endpoint:
    clean = [o.text for o in client(endpoint).run(requests(8))]
    endpoint.faults = list(faults)
    c = client(endpoint, timeout=0.5, max_concurrency=2)
    out = c.run(requests(8))
  assert [o.text for o in out] == clean
  for kind in ("rate_limit", "server_error", "connection", "truncated", "invalid_output", "timeout"):
    assert c.stats[f"error_{kind}"] >= 1, (kind, c.stats)
  assert c.stats["retries"] == len(faults) and c.stats["failed"] == 0
  assert c._limit < 2 or c.stats["requests"] == 8  # the 429 halved the concurrency (it grows back)


def test_the_same_request_in_flight_is_sent_once():
  with FakeEndpoint(echo) as endpoint:
    c = client(endpoint)
    out = c.run(requests(1) * 5 + requests(2))
  assert [o.text for o in out] == ["echo: question 0"] * 6 + ["echo: question 1"]
  assert len(endpoint.answered) == 2 and c.stats["cache_hits"] == 5 and sum(o.cached for o in out) == 5


def test_final_errors_come_back_in_place_and_retry_after_is_honoured():
  with FakeEndpoint(echo, retry_after="0.4") as endpoint:
    c = client(endpoint, max_retries=0)
    wrong_model = c.run([Request("no-such-model", [{"role": "user", "content": "x"}])])[0]
    assert isinstance(wrong_model, HostedError) and wrong_model.kind == "client_error"
    endpoint.faults = ["content_filter"]
    filtered = c.run(requests(1))[0]
    assert isinstance(filtered, HostedError) and filtered.kind == "content_filter"
    endpoint.faults = ["429"]
    t = time.perf_counter()
    answer = client(endpoint, max_retries=2, backoff=0.001).run(requests(1))[0]
    assert answer.text == "echo: question 0" and time.perf_counter() - t >= 0.4
  with pytest.raises(HostedError, match="GET /models"):
    HostedClient(ClientConfig(base_url=endpoint.base_url, timeout=1)).models()  # (shut down)


def test_the_cache_answers_a_rerun_and_holds_no_key(tmp_path, monkeypatch):
  monkeypatch.setenv("JUDGE_KEY", "sk-secret-123")
  with FakeEndpoint(echo) as endpoint:
    first = client(endpoint, cache_dir=str(tmp_path), api_key_env="JUDGE_KEY").run(requests(5))
    sent = len(endpoint.answered)
    c = client(endpoint, cache_dir=str(tmp_path), api_key_env="JUDGE_KEY")
    again = c.run(requests(5))
    assert len(endpoint.answered) == sent == 5 and c.stats["cache_hits"] == 5  # zero new requests
    assert [a.text for a in again] == [f.text for f in first] and all(a.cached for a in again)
    assert endpoint.headers[0]["Authorization"] == "Bearer sk-secret-123"
    assert client(endpoint).models() == ["judge"]
  for root, _, files in os.walk(tmp_path):
    for name in files:
      assert "sk-secret" not in open(os.path.join(root, name)).read()


def judge_answer(prompt: str) -> str:
  """A judge model that reads the prompts HostedJudge sends: observations supported when their
  words are in the caption lines given; the inferred answer is the last colour observed."""
  if "Is the report supported" in prompt:
    caption, report = prompt.split("reported:")
    words = report.split("\"")[1].lower().replace(".", "").split()
    return "1" if all(w in caption.lower() for w in words if w not in ("the", "a")) else "0"
  if "using only these observations" in prompt:
    observed = prompt.split("observations:")[1]
    return "<answer>" + ("blue" if "blue" in observed else "red") + "</answer>"
  model, truth = prompt.split("Model Answer: ")[1].split("\nStandard Answer: ")
  return "1" if model.strip().lower() == truth.split("\n")[0].strip().lower() else "0"


def test_the_hosted_judges_drive_the_o_and_r_reward():
  record = qa("C", "multiple choice", "mc", OPTIONS, duration=10.0)
  half = GOOD.replace("the circle turns blue", "a square appears")
  with FakeEndpoint(judge_answer) as endpoint:
    judge = HostedJudge(client(endpoint), "judge", tolerance=0.0)
    right, partial = reward([Sample(record, CAPTION, GOOD), Sample(record, CAPTION, half)], judge, RewardConfig())
    assert (right["observation"], right["reasoning"], right["reward"]) == (1.0, 1.0, 4.0)
    assert (partial["observation"], partial["reasoning"]) == (0.5, 0.0)
    open_record = qa("blue", duration=10.0)
    out = reward([Sample(open_record, CAPTION, GOOD.replace("<answer>C", "<answer>Blue"))], judge, RewardConfig())
    assert out[0]["accuracy"] == 1.0 and out[0]["reward"] == 4.0  # the answer judge said 1
    endpoint.faults = ["500"] * 20
    failing = HostedJudge(client(endpoint, max_retries=0), "judge")
    lost = reward([Sample(record, CAPTION, GOOD)], failing, RewardConfig())[0]
  assert not lost["scored"] and math.isnan(lost["reward"])  # never a silent 0
