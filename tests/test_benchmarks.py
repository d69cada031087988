"""The benchmark scripts still run (tiny sizes): they share the trainer's code and configs, and
drift there broke one once without any test noticing."""

import gzip
import json
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
def test_sampler_benchmark_runs():
  pytest.importorskip("torch", reason="the benchmark compares against transformers' generate")
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)
  out = subprocess.run([sys.executable, os.path.join("benchmarks", "sampler.py"), "--frames", "2", "--size", "56",
                        "--decode_tokens", "3", "--rollout_tokens", "3", "--repeats", "1"], cwd=ROOT,
                       capture_output=True, text=True, env=env, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "decode tokens/s ours / HF" in out.stdout and "rollout (4 prompts x 8 samples x 3 tokens)" in out.stdout


@pytest.mark.slow
def test_rl_step_benchmark_runs(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)
  out = subprocess.run([sys.executable, os.path.join("benchmarks", "rl_step.py"), "--videos", "4", "--steps", "1",
                        "--samples", "2", "--new_tokens", "8", "--models", "demo", "--workdir", str(tmp_path)],
                       cwd=ROOT, capture_output=True, text=True, env=env, timeout=900)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "rollout %" in out.stdout and out.stdout.strip().splitlines()[-1].startswith("demo")


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
  ops = out.stdout.split("where a traced step's time went:")[1]
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


def test_trace_summary_of_a_gpu_trace_is_gpu_trace_report(tmp_path):
  """top_trace_ops on a GPU-shaped perfetto trace (what jax.profiler writes there) reads only the
  device's events, through gpu_trace.report: one step by kind, its busy time, the longest kernels;
  save_device_trace keeps those events only."""
  sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
  from common import save_device_trace, top_trace_ops
  meta = lambda kind, pid, name, tid=0: dict(ph="M", name=kind, pid=pid, tid=tid, args=dict(name=name))
  op = lambda name, ts, dur, pid=1: dict(ph="X", name=name, pid=pid, tid=14, ts=ts, dur=dur)
  events = [meta("process_name", 1, "/device:GPU:0"), meta("thread_name", 1, "Stream #14(Compute)", 14),
            meta("process_name", 7, "/host:CPU"), op("nvjet_gemm", 0, 600), op("loop_add_fusion_3", 600, 100),
            op("loop_add_fusion_4", 800, 200), op("PjitFunction(step)", 0, 2000, pid=7)]
  os.makedirs(tmp_path / "run")
  with gzip.open(tmp_path / "run" / "host.perfetto_trace.json.gz", "wt") as f:
    json.dump(dict(traceEvents=events), f)
  lines = top_trace_ops(str(tmp_path))
  assert lines[0] == "one step: 3 kernels over 1.0 ms, 0.9 ms of them busy"
  assert lines[1].split()[:2] == ["0.60", "ms"] and "cuBLAS" in lines[1]
  assert not any("Pjit" in line for line in lines)
  assert save_device_trace(str(tmp_path), str(tmp_path / "dev.json.gz")) == 5


def test_gpu_trace_report_names_the_hlo_op_of_each_kernel():
  """benchmarks/gpu_trace.py on a GPU-shaped step: a fusion kernel by its HLO name, a cuBLAS kernel
  by the custom-call after the fusion that ran before it; the second step is left out."""
  sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
  import gpu_trace
  hlo = "\n".join([
      'ENTRY %main {',
      '  %loop_add_fusion.3 = bf16[8,16]{1,0} fusion(%p0, %p1), kind=kLoop, calls=%f, metadata={op_name="jit(step)/add"}',
      '  %custom-call.7 = (bf16[8,3420]{1,0}, s8[64]{0}) custom-call(%loop_add_fusion.3, %w.2), '
      'custom_call_target="__cublas$lt$matmul", metadata={op_name="jit(step)/transpose(jvp())/dot_general"}',
      '}'])
  op = lambda name, ts, dur: dict(ph="X", name=name, pid=1, tid=14, ts=ts, dur=dur)
  events = [op("loop_add_fusion_3", 0, 100), op("cutlass_80_align2_gemm", 100, 700),
            op("loop_add_fusion_3", 5000, 100), op("cutlass_80_align2_gemm", 5100, 700)]  # step 2
  lines = gpu_trace.report(events, hlo)
  assert lines[0] == "one step: 2 kernels over 0.8 ms, 0.8 ms of them busy"
  assert lines[1].split() == ["0.70", "ms", "x1", "cuBLAS", "and", "other", "library", "kernels"]
  gemm = next(line for line in lines if "cutlass_80" in line)
  assert "bf16[8,3420] <- (loop_add_fusion, w)" in gemm and "transpose(jvp())/dot_general" in gemm
  assert "bf16[8,16] <- (p0, p1) [jit(step)/add]" in next(line for line in lines if "loop_add_fusion_3" in line)


@pytest.mark.slow
def test_video_decode_benchmark_runs_its_pipeline_parts():
  """(The decode part needs PyAV and decord, which are not test dependencies.)"""
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)
  out = subprocess.run([sys.executable, os.path.join("benchmarks", "video_decode.py"), "--parts", "prepare", "pipeline",
                        "recipe", "--quick", "--repeats", "1", "--steps", "2"],
                       cwd=ROOT, capture_output=True, text=True, env=env, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "videos/s" in out.stdout and "headroom" in out.stdout and "chips fed" in out.stdout
