"""Data synthesis end to end over real HTTP: the oracle server (FastAPI + uvicorn on loopback) answers
every role from a small toy world; the pipeline's outputs are checked against that world's ground
truth, and every failure (faults, kill -9, the budget, bad input) must end in the clean run's files."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import httpx
import pytest

from configs import synthesis as synthesis_config
from data_synthesis.oracle import OracleBackend
from data_synthesis.pipeline import Synthesis
from rewatch_jax.data import records
from rewatch_jax.demo import toyworld
from rewatch_jax.rewards.format import check_format
from rewatch_jax.serve.app import FAULTS, Faults, create_app, serving

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUTPUTS = ("captions", "qa_candidates", "qa_filtered", "qa", "cot")
SECRET = "sk-test-0123456789abcdef"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("toyworld"))
  toyworld.build(root, 8, seed=0, test_fraction=0.25, duration=(8, 24))
  return root


@pytest.fixture(scope="module")
def server(world):
  faults = Faults()
  with serving(create_app(OracleBackend(world), faults)) as url:
    yield url, faults


def config(url, **over):
  c = synthesis_config.get_config("toy")
  c.client.base_url = url
  c.client.max_retries = 12  # (20% faults: a request fails 13 times in a row ~1e-9 of the time)
  for k, v in over.items():
    target = c
    *path, last = k.split(".")
    for p in path:
      target = target[p]
    target[last] = v
  return c


def contents(out):
  """Everything a run's outputs hold but the report's timestamps: record files, the done-manifests'
  statuses, the quarantine."""
  got = {}
  for name in OUTPUTS:
    with open(os.path.join(out, f"{name}.jsonl")) as f:
      lines = [json.loads(x) for x in f]
    ids = [x["id"] for x in lines]
    assert len(ids) == len(set(ids)), f"{name}: a record twice"
    got[name] = sorted(json.dumps(x, sort_keys=True) for x in lines)
    with open(os.path.join(out, f"{name}.done.jsonl")) as f:
      done = [json.loads(x) for x in f]
    assert len(done) == len({d["item"] for d in done}), f"{name}: an item done twice"
    got[f"{name}.done"] = sorted((d["item"], d["status"], tuple(d["records"])) for d in done)
  with open(os.path.join(out, "quarantine.jsonl")) as f:
    got["quarantine"] = sorted(json.loads(x)["key"] for x in f)
  return got


def served(url) -> int:
  return httpx.get(url + "/stats").json().get("requests", 0)


@pytest.fixture(scope="module")
def clean(world, server, tmp_path_factory):
  """A clean run (with an API key in the environment) and what the server answered."""
  url, _ = server
  out = str(tmp_path_factory.mktemp("clean"))
  os.environ["OPENAI_API_KEY"] = SECRET
  try:
    before = served(url)
    report = Synthesis(config(url), world, out).run()
  finally:
    del os.environ["OPENAI_API_KEY"]
  return out, report, served(url) - before


def test_stages_against_the_world(world, clean):
  out, report, _ = clean
  truth = {c.video: c for split in ("train", "test") for c in records.read_jsonl(f"{world}/{split}_caption.jsonl")}
  qa_truth = {(q.video, q.question): q for split in ("train", "test")
              for q in records.read_jsonl(f"{world}/{split}_qa.jsonl") if q.form == "open"}
  read = lambda name: list(records.read_jsonl(os.path.join(out, f"{name}.jsonl")))
  # captions: segmented (videos > 10 s), captioned per segment, realigned: the world's own captions
  caps = read("captions")
  assert len(caps) == 8 and report["items"]["caption"] == {"ok": 8}
  for c in caps:
    assert c.segments == truth[c.video].segments, c.video
    assert c.lineage.video_spec_hash and c.lineage.prompt_version == "caption.v1"
    assert c.lineage.extra["usage"]["cost"] > 0
  assert any(len(c.lineage.extra["segments"]) > 1 for c in caps)
  # QA: the filters drop the generator's wrong answers (F1) and the pairs the probes answer (F2, F3)
  candidates, kept = read("qa_candidates"), read("qa_filtered")
  wrong = [q for q in candidates if q.answer != qa_truth[q.video, q.question].answer]
  assert wrong and not [q for q in kept if q.answer != qa_truth[q.video, q.question].answer]
  f = report["filters"]
  assert f["kept"] == len(kept) and f["kept"] + f["dropped"] == len(candidates)
  assert f["dropped_by_F1"] == len(wrong) and f["dropped_by_F2"] > 0 and f["dropped_by_F3"] > 0
  for q in kept:
    v = q.lineage.extra["verdicts"]
    assert v["f1_correct"] and v["f2_probes_right"] < 1 and v["f3_probes_right"] < 1
  # MC: both forms, linked, the letter on the right option
  qa = {q.id: q for q in read("qa")}
  assert len(qa) == 2 * len(kept)
  for q in qa.values():
    pair = qa[q.lineage.extra["pair"]]
    assert pair.lineage.extra["pair"] == q.id and pair.question == q.question and pair.form != q.form
    if q.form == "mc":
      assert q.answer_text == pair.answer and len(set(q.options)) == 4
  # CoT: accepted trajectories only, in ReWatch's format, with the record's answer
  cots = read("cot")
  c = report["cot"]
  assert c["accepted"] == len(cots) and c["rejected"] > 0 and c["bad_format"] > 0
  assert c["tried"] == len(qa) and 0.5 < c["acceptance_rate"] < 1
  for r in cots:
    trace = check_format(r.reasoning, r.duration)
    assert trace.ok and trace.steps and qa[r.lineage.extra["qa"]].answer == r.answer
    assert r.lineage.extra["verdicts"]["f1_correct"] and r.lineage.extra["usage"]["answers"] >= 3
  # invalid answers quarantined with their raw text; the report counts what the files hold
  with open(os.path.join(out, "quarantine.jsonl")) as fq:
    quarantined = [json.loads(x) for x in fq]
  assert len(quarantined) == c["bad_format"] and all(q["raw"] and q["error"] for q in quarantined)
  assert report["files"] == {**{f"{n}.jsonl": len(read(n)) for n in OUTPUTS}, "quarantine.jsonl": len(quarantined)}
  card = open(os.path.join(out, "README.md")).read()
  assert f"| cot.jsonl | {len(cots)} |" in card and f"Kept {f['kept']}, dropped {f['dropped']}" in card
  assert sum(r["cost"] for roles in report["usage"].values() for r in roles.values()) == pytest.approx(report["spent"])


def test_no_api_key_in_any_file(clean):
  out, _, _ = clean
  for d, _, files in os.walk(out):
    for name in files:
      with open(os.path.join(d, name), "rb") as f:
        assert SECRET.encode() not in f.read(), name


def test_rerun_costs_nothing(world, server, clean, tmp_path):
  """The same command again sends nothing; and a new output folder with the same cache redoes every
  stage from it, sending nothing, to the same records."""
  url, _ = server
  out, _, _ = clean
  before = served(url)
  Synthesis(config(url), world, out).run()
  fresh = str(tmp_path / "fresh")
  report = Synthesis(config(url, **{"client.cache_dir": os.path.join(out, "cache")}), world, fresh).run()
  assert served(url) == before
  assert contents(fresh) == contents(out)
  assert all(r["requests"] == 0 for roles in report["usage"].values() for r in roles.values())


def test_faults_end_in_the_clean_records(world, server, clean, tmp_path):
  url, faults = server
  out = str(tmp_path / "faulty")
  faults.rate, faults.kinds, faults.slow_seconds = 0.2, tuple(k for k in FAULTS if k != "content_filter"), 1.5
  try:
    report = Synthesis(config(url, **{"client.timeout": 1.0}), world, out).run()
  finally:
    faults.rate = 0.0
  assert contents(out) == contents(clean[0])
  kinds = {k for stage in report["errors_this_run"].values() for k in stage}
  assert {"rate_limit", "server_error", "timeout", "connection", "truncated", "invalid_output"} <= kinds, kinds
  assert {"caption", "filter", "cot"} <= set(report["errors_this_run"])  # (counted per stage)


def test_content_filter_fails_only_its_item(world, server, tmp_path):
  url, faults = server
  out = str(tmp_path / "filtered")
  faults.queue[:] = ["content_filter"]
  report = Synthesis(config(url), world, out).run(["caption"])
  assert report["items"]["caption"] == {"error:content_filter": 1, "ok": 7}
  assert report["errors_this_run"] == {"caption": {"content_filter": 1}}


def _synthesize(world, url, out, *flags):
  cmd = [sys.executable, "launch/synthesize.py", "--config", "configs/synthesis.py:toy", "--videos", world,
         "--out", out, f"--config.client.base_url={url}", *flags]
  return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_kill_9_in_every_stage_loses_and_repeats_nothing(world, server, clean, tmp_path):
  """kill -9 as soon as each stage has committed its first item (mid-ReAct too), then the same
  command to the end: the clean run's files, each record once."""
  url, faults = server
  out = str(tmp_path / "killed")
  faults.latency = 0.02  # (slow enough to land the kills inside each stage)
  try:
    for name in OUTPUTS:
      proc = _synthesize(world, url, out)
      done = os.path.join(out, f"{name}.done.jsonl")
      deadline = time.monotonic() + 120
      while proc.poll() is None and not (os.path.exists(done) and os.path.getsize(done)) and time.monotonic() < deadline:
        time.sleep(0.01)
      if name == "cot":  # also kill one trajectory between its steps
        while proc.poll() is None and not os.path.exists(os.path.join(out, "cot.steps.jsonl")):
          time.sleep(0.01)
      proc.send_signal(signal.SIGKILL)
      proc.wait()
  finally:
    faults.latency = 0.0
  proc = _synthesize(world, url, out)
  log = proc.communicate(timeout=300)[0]
  assert proc.returncode == 0, log[-3000:]
  assert contents(out) == contents(clean[0])


def test_budget_stops_cleanly_and_a_rerun_goes_on(world, server, clean, tmp_path):
  url, _ = server
  out = str(tmp_path / "budget")
  proc = _synthesize(world, url, out, "--config.budget=0.1")
  log = proc.communicate(timeout=300)[0]
  assert proc.returncode == 1 and "stopped: spent $" in log and "budget" in log, log[-2000:]
  report = json.load(open(os.path.join(out, "report.json")))
  assert report["stopped"] and 0.1 <= report["spent"] < 0.2
  assert "**The run stopped early:**" in open(os.path.join(out, "README.md")).read()
  proc = _synthesize(world, url, out, "--config.budget=100")
  assert proc.communicate(timeout=300)[0] and proc.returncode == 0
  assert contents(out) == contents(clean[0])


def test_bad_input_and_dry_run(world, server, tmp_path):
  url, _ = server
  videos = tmp_path / "videos"
  shutil.copytree(os.path.join(world, "videos"), videos / "videos")
  (videos / "videos" / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 this is not a video")
  out = str(tmp_path / "bad")
  report = Synthesis(config(url), str(videos), out).run(["caption"])
  assert report["items"]["caption"] == {"ok": 8, "unreadable": 1}
  assert [u["video"] for u in report["unreadable"]] == ["videos/broken.mp4"]
  # an endpoint that is down, and a model it does not serve: told at once, nothing decoded
  with pytest.raises(SystemExit, match="not reachable"):
    Synthesis(config("http://127.0.0.1:9/v1"), world, str(tmp_path / "down")).run()
  with pytest.raises(SystemExit, match=r"does not serve \['gpt-9'\]"):
    Synthesis(config(url, **{"roles.verify.model": "gpt-9", "prices": (("oracle", 1, 1), ("gpt-9", 1, 1))}), world,
              str(tmp_path / "nomodel")).run()
  assert not os.path.exists(tmp_path / "down" / "captions.jsonl") or not open(tmp_path / "down" / "captions.jsonl").read()
  with pytest.raises(ValueError, match=r"no price for model\(s\) \['gpt-9'\]"):
    Synthesis(config(url, **{"roles.verify.model": "gpt-9"}), world, str(tmp_path / "noprice")).run()
  # the dry run: requests, tokens and cost per stage; sends nothing
  before = served(url)
  proc = _synthesize(world, url, str(tmp_path / "dry"), "--dry_run")
  log = proc.communicate(timeout=120)[0]
  assert proc.returncode == 0 and "dry run over 8 videos" in log and "cot" in log, log[-2000:]
  assert served(url) == before


@pytest.mark.slow
def test_synthesized_records_prepare_and_train(world, clean, tmp_path):
  """synthesize -> prepare -> train: the records as written, prepared with the demo's VideoSpec,
  and a few SFT steps of the demo model on them."""
  out, prepared = clean[0], str(tmp_path / "prepared")
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)
  px = str(84 * 112)
  for kind, name in (("caption", "captions"), ("qa", "qa"), ("cot", "cot")):
    done = subprocess.run([sys.executable, "launch/prepare.py", "--records", os.path.join(out, f"{name}.jsonl"),
                           "--videos", world, "--out", prepared, "--config", kind, "--tokenizer",
                           os.path.join(world, "tokenizer.json"), "--fps", "0.5", "--max_frames", "16",
                           "--min_pixels", px, "--max_pixels", px, "--total_pixels", str(16 * 84 * 112)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    n = sum(1 for _ in open(os.path.join(out, f"{name}.jsonl")))
    assert done.returncode == 0 and f"{kind}: wrote {n} of {n} records" in done.stderr, done.stderr[-3000:]
  work = str(tmp_path / "train")
  done = subprocess.run([sys.executable, "launch/train.py", "--config", "configs/demo.py:sft", "--workdir", work,
                         "--config.total_steps=3", "--config.log_every_steps=1", "--config.checkpoint_every_steps=3",
                         "--config.demo.videos=0", f"--config.data.dir={prepared}",
                         f"--config.tokenizer={os.path.join(world, 'tokenizer.json')}",
                         "--config.data.weights.perception=0", "--config.data.weights.perception_cot=0"],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
  assert done.returncode == 0, done.stderr[-3000:]
  losses = [json.loads(x)["loss"] for x in open(os.path.join(work, "metrics.jsonl")) if '"loss"' in x]
  assert len(losses) == 3 and all(0 < x < 100 for x in losses)
