"""`launch/serve.py`: the OpenAI-compatible server as users start it, and the app's answers to bad
requests."""

import os
import socket
import subprocess
import sys
import time

import httpx

from tests.openai_server import FakeEndpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_bad_requests_get_openai_style_errors():
  with FakeEndpoint(lambda prompt: "ok") as endpoint:
    url = endpoint.base_url
    chat = lambda **body: httpx.post(url + "/chat/completions", json=body)
    r = chat(model="nope", messages=[{"role": "user", "content": "x"}])
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    assert chat(model="judge", messages=[{"role": "user", "content": "x"}], stream=True).status_code == 400
    assert chat(model="judge").status_code == 422  # no messages
    assert httpx.post(url + "/faults", json={"faults": ["oops"]}).status_code == 400
    ok = chat(model="judge", messages=[{"role": "user", "content": "hello there"}], temperature=0.3).json()
    assert ok["choices"][0]["message"]["content"] == "ok" and ok["usage"]["prompt_tokens"] == 2
    stats = httpx.get(url + "/stats").json()
    assert (stats["requests"], stats["answered"], stats["status_404"], stats["status_422"]) == (4, 1, 1, 1)


def test_launch_serve_answers_the_synthesis_roles(tmp_path):
  from rewatch_jax.demo import toyworld
  world = str(tmp_path / "toy")
  toyworld.build(world, 2, seed=0, test_fraction=0.5)
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  missing = subprocess.run([sys.executable, "launch/serve.py", "--port", str(port)], cwd=ROOT, capture_output=True,
                           text=True, timeout=60)
  assert missing.returncode != 0 and "needs --toyworld" in missing.stderr
  proc = subprocess.Popen([sys.executable, "launch/serve.py", "--toyworld", world, "--port", str(port),
                           "--models", "oracle,oracle-2"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
  try:
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 60
    while True:
      try:
        models = httpx.get(url + "/models").json()
        break
      except httpx.TransportError:
        assert time.monotonic() < deadline and proc.poll() is None, proc.stdout.read()
        time.sleep(0.2)
    assert [m["id"] for m in models["data"]] == ["oracle", "oracle-2"]
    from data_synthesis import schemas
    body = dict(model="oracle", messages=[{"role": "user", "content": "Video: videos/toy-000000.mp4\nsummary"}],
                response_format=schemas.response_format(schemas.Summary))
    answer = httpx.post(url + "/chat/completions", json=body).json()["choices"][0]["message"]["content"]
    assert answer.startswith('{"summary": "The background is ')  # (the oracle's summary of that video)
  finally:
    proc.terminate()
    proc.wait(timeout=30)
