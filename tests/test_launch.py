"""The README's main command, as a user runs it, and its config validation."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _train(*args):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)
  return subprocess.run([sys.executable, "launch/train.py", *args], cwd=ROOT, capture_output=True,
                        text=True, env=env, timeout=600)


def test_demo_runs_and_writes_results(tmp_path):
  out = _train("--config", "configs/demo.py", "--workdir", str(tmp_path), "--config.demo.steps=1")
  assert out.returncode == 0, out.stderr[-3000:]
  result = json.loads((tmp_path / "demo_forward.json").read_text())
  assert result["tokens_per_sec"] > 0 and abs(result["loss"] - result["uniform_loss"]) < 1.0
  assert json.loads((tmp_path / "config.json").read_text())["demo"]["steps"] == 1


def test_mistyped_override_fails_at_start():
  out = _train("--config", "configs/demo.py", "--config.demo.batch_sise=4")
  assert out.returncode != 0 and "batch_sise" in out.stderr


def test_invalid_model_override_is_named():
  out = _train("--config", "configs/demo.py", "--config.model.text.num_key_value_heads=3")
  assert out.returncode != 0 and "num_key_value_heads" in out.stderr


def test_prepare_toyworld(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, "launch/prepare.py", "--toyworld", "3", "--out", str(tmp_path)],
                       cwd=ROOT, capture_output=True, text=True, env=env, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  assert len(list((tmp_path / "videos").glob("*.mp4"))) == 3
  assert (tmp_path / "test_qa.jsonl").stat().st_size > 0 and "train_cot" in out.stdout


def test_prepare_records_into_array_record(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  run = lambda *a: subprocess.run([sys.executable, "launch/prepare.py", *a], cwd=ROOT, capture_output=True,
                                  text=True, env=env, timeout=600)
  out = run("--toyworld", "2", "--out", str(tmp_path / "toy"), "--test_fraction", "0.5")
  assert out.returncode == 0, out.stderr[-2000:]
  out = run("--records", str(tmp_path / "toy" / "test_caption.jsonl"), "--videos", str(tmp_path / "toy"),
            "--out", str(tmp_path / "prep"), "--config", "caption", "--max_frames", "4",
            "--min_pixels", "3136", "--max_pixels", "3136")
  assert out.returncode == 0, out.stderr[-2000:]
  assert "caption: wrote 1 of 1 records" in out.stdout
  assert (tmp_path / "prep" / "rewatch" / "caption" / "1.0.0" / "prepare_report.json").exists()
  out = run("--records", "x.jsonl", "--out", str(tmp_path))
  assert out.returncode != 0 and "--records, --videos and --config" in out.stderr
