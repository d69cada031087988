"""launch/prepare.py's summary names what was not trained on: captions past their decoded video."""

import dataclasses
import os
import subprocess
import sys

from rewatch_jax.data import records
from rewatch_jax.demo import toyworld

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_summary_lists_captions_past_the_video(tmp_path):
  toyworld.build(str(tmp_path / "toy"), count=1, seed=3, test_fraction=0)
  (cap,) = records.read_jsonl(str(tmp_path / "toy" / "train_caption.jsonl"))
  d = cap.duration
  long = dataclasses.replace(cap, id="", duration=d + 30,
                             segments=(*cap.segments, records.Segment(d, d + 30, "the screen stays black")))
  records.write_jsonl(str(tmp_path / "captions.jsonl"), [cap, long])
  out = subprocess.run([sys.executable, "launch/prepare.py", "--records", str(tmp_path / "captions.jsonl"),
                        "--videos", str(tmp_path / "toy"), "--out", str(tmp_path / "prep"), "--config", "caption",
                        "--max_frames", "4", "--min_pixels", "3136", "--max_pixels", "3136"],
                       cwd=ROOT, capture_output=True, text=True, env=dict(os.environ, JAX_PLATFORMS="cpu"), timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  end, decoded = records.format_timestamp(d + 30), f"{d:.1f} s"
  assert "caption: wrote 1 of 2 records (skipped 1)" in out.stderr
  assert f"skipped {long.id}: caption ends at {end} past the video's {decoded}" in out.stderr
  assert "1 caption ends more than 1.0 s past the decoded video:" in out.stderr
  assert f"caption {long.id} of {cap.video} ends at {end}; the video holds {decoded}" in out.stderr
  assert "1 record states a duration more than 1.0 s off the decoded video's (kept):" in out.stderr
  assert f"{long.id} of {cap.video} states {d + 30:.1f} s; the video holds {decoded}" in out.stderr
