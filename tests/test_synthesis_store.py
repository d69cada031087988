"""The synthesis stage store: a committed item's records are all there, an uncommitted item's are
not, a record is never written twice, and a run killed with SIGKILL mid-run (three times) then
rerun ends with exactly the files a clean run writes."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from data_synthesis.store import StageStore
from rewatch_jax.data.records import QARecord

WRITER = """
import sys
from data_synthesis.store import StageStore
from rewatch_jax.data.records import QARecord
store = StageStore(sys.argv[1], "qa")
for i in range(int(sys.argv[2])):
  item = f"video-{i:04d}"
  if store.is_done(item):
    continue
  recs = [QARecord(video=f"v{i}.mp4", question=f"question {k} of {i}" + "?" * 200, answer=str(k), question_type="counting") for k in range(i % 4)]
  store.commit(item, recs, status="ok" if recs else "skipped", cost=0.001 * len(recs))
"""


def qa(i, k):
  return QARecord(video=f"v{i}.mp4", question=f"question {k} of {i}?", answer=str(k), question_type="counting")


def test_commit_reopen_and_uncommitted_records(tmp_path):
  store = StageStore(str(tmp_path), "qa")
  store.commit("a", [qa(0, 0), qa(0, 1)], cost=0.5)
  store.commit("b", [], status="skipped", reason="unreadable video")
  store.commit("c", [qa(0, 1), qa(2, 0)])  # qa(0, 1) again: written once
  with pytest.raises(ValueError, match="already done"):
    store.commit("a", [qa(9, 9)])
  # an item killed after its records and before its done line; a torn last done line
  with open(tmp_path / "qa.jsonl", "a") as f:
    f.write(json.dumps({"kind": "qa", "video": "x.mp4", "question": "lost?", "answer": "1", "question_type": "counting", "id": "qa-lost"}) + "\n")
    f.write('{"kind": "qa", "vid')
  with open(tmp_path / "qa.done.jsonl", "a") as f:
    f.write('{"item": "d", "sta')
  again = StageStore(str(tmp_path), "qa")
  assert set(again.done) == {"a", "b", "c"} and again.done["b"]["reason"] == "unreadable video"
  assert again.dropped == 1 and len(again) == 3
  assert [r.id for r in again.records()] == [qa(0, 0).id, qa(0, 1).id, qa(2, 0).id]
  assert not again.is_done("d")
  assert (tmp_path / "qa.done.jsonl").read_text().endswith("\n")


def test_kill_9_at_random_moments_then_rerun_equals_a_clean_run(tmp_path):
  env = dict(os.environ, PYTHONPATH=os.getcwd())
  items = 3000
  clean = tmp_path / "clean"
  subprocess.run([sys.executable, "-c", WRITER, str(clean), str(items)], check=True, env=env)
  killed = tmp_path / "killed"
  partial = []
  for target in (100, 1200, 2400):  # SIGKILL once the run has done about this many items
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(killed), str(items)], env=env)
    done = killed / "qa.done.jsonl"
    while proc.poll() is None and (not done.exists() or done.read_bytes().count(b"\n") < target):
      time.sleep(0.001)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    store = StageStore(str(killed), "qa")  # after each kill: committed items whole, nothing twice
    ids = [r.id for r in store.records()]
    assert len(ids) == len(set(ids)) == sum(len(d["records"]) for d in store.done.values())
    partial.append(len(store.done))
  assert any(0 < n < items for n in partial), partial  # some kill fell mid-run
  subprocess.run([sys.executable, "-c", WRITER, str(killed), str(items)], check=True, env=env)
  for name in ("qa.jsonl", "qa.done.jsonl"):
    assert (killed / name).read_text() == (clean / name).read_text()
