"""launch/convert.py round trip through real processes: HF -> Orbax -> HF, reloaded by transformers."""

import os
import subprocess
import sys

import numpy as np

from rewatch_jax import checkpoint
from rewatch_jax.models import forward_hf_inputs, from_hf_inputs
from tests.hf_reference import build_hf_model, hf_logits, make_batch, tiny_config, transformers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*args):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, os.path.join(ROOT, "launch", "convert.py"), *args],
                       capture_output=True, text=True, env=env, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  return out


def test_convert_roundtrip(tmp_path):
  cfg = tiny_config()
  ref = build_hf_model(cfg, seed=5)
  ref.save_pretrained(tmp_path / "hf")
  _run("--hf_dir", str(tmp_path / "hf"), "--out_dir", str(tmp_path / "ckpt"))
  model = checkpoint.load_model(str(tmp_path / "ckpt"))
  batch = make_batch(cfg, [[2, ("video", (2, 4, 4), 1.0), 3], [1, ("image", (1, 4, 6)), 2]])
  positions = from_hf_inputs(cfg, **batch).positions
  expected = hf_logits(ref, batch, positions)
  real = batch["attention_mask"].astype(bool)
  assert np.abs(forward_hf_inputs(model, **batch) - expected)[real].max() <= 1e-4
  _run("--checkpoint_dir", str(tmp_path / "ckpt"), "--hf_out", str(tmp_path / "hf_out"))
  reloaded = transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(tmp_path / "hf_out").eval()
  assert np.abs(hf_logits(reloaded, batch, positions) - expected)[real].max() <= 1e-5


def test_convert_usage_errors(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, os.path.join(ROOT, "launch", "convert.py"), "--hf_dir", "x"],
                       capture_output=True, text=True, env=env, timeout=300)
  assert out.returncode != 0 and "--hf_dir needs --out_dir" in out.stderr
  out = subprocess.run([sys.executable, os.path.join(ROOT, "launch", "convert.py"),
                        "--checkpoint_dir", str(tmp_path), "--hf_out", str(tmp_path / "o")],
                       capture_output=True, text=True, env=env, timeout=300)
  assert out.returncode != 0 and "not a rewatch-jax checkpoint directory" in out.stderr
