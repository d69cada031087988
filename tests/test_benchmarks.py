"""The benchmark scripts still run (tiny sizes): they share the trainer's code and configs, and
drift there broke one once without any test noticing."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
@pytest.mark.parametrize("script, extra", [("model_forward.py", []), ("train_step.py", ["--compile_steps", "2"])])
def test_comparison_benchmark_runs(script, extra):
  pytest.importorskip("torch", reason="the benchmarks compare against transformers on torch")
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)
  out = subprocess.run([sys.executable, os.path.join("benchmarks", script), "--steps", "1", "--frames", "2",
                        "--size", "56", *extra], cwd=ROOT, capture_output=True, text=True, env=env, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "speed-up (tokens/s ours / HF)" in out.stdout


@pytest.mark.slow
def test_profile_script_maps_xla_ops_to_source_ops():
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)
  out = subprocess.run([sys.executable, os.path.join("benchmarks", "profile_step.py"), "--part", "full",
                        "--steps", "1", "--frames", "2", "--size", "56", "--top", "50"],
                       cwd=ROOT, capture_output=True, text=True, env=env, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "s/step wall" in out.stdout
  assert "dot_general" in out.stdout  # the matmuls were found and named by their source op


@pytest.mark.slow
def test_gpu_benchmark_runs_on_cpu_and_prints_the_profiled_ops(tmp_path):
  """benchmarks/gpu_session.sh's script, small and on the CPU: a lent GPU's minutes go to numbers."""
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)
  out = subprocess.run([sys.executable, os.path.join("benchmarks", "train_step_gpu.py"), "--small", "--impls", "jax_xla",
                        "--steps", "1", "--frames", "4", "--size", "224", "--length", "512", "--trained", "64",
                        "--profile_dir", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, env=env, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "train-step compilations: 1" in out.stdout
  ops = out.stdout.split("device ops over two traced steps:")[1]
  assert "fusion" in ops and "PjitFunction" not in ops


@pytest.mark.slow
def test_reading_probe_trains_and_scores():
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)
  out = subprocess.run([sys.executable, os.path.join("benchmarks", "reading_probe.py"), "--question", "backdrop_change",
                        "--frames", "4", "--steps", "2", "--batch", "2"],
                       cwd=ROOT, capture_output=True, text=True, env=env, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "exact match on 64 held-out examples: own frames" in out.stdout
