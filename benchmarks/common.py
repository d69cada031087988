"""Shared by the benchmark scripts: run each implementation in its own process, print the table."""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import resource
import subprocess
import sys
import time


def run_children(script: str, hf_dir: str, extra: list[str]) -> dict[str, dict]:
  from rewatch_jax import host
  rows = {}
  for impl in ("jax", "torch"):
    cmd = [sys.executable, script, "--impl", impl, "--hf_dir", hf_dir, *extra]
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
    # launch/train.py's malloc setting (rewatch_jax/host.py), for both implementations alike
    env = host.cpu_environ(env) or env
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode:
      sys.exit(f"{impl} run failed:\n{out.stderr[-4000:]}")
    rows[impl] = json.loads(out.stdout.strip().splitlines()[-1])
  return rows


def print_comparison(rows: dict[str, dict], names: dict[str, str]) -> float:
  """tokens/s, median step, first step (compile) and peak RSS per implementation; returns ours/HF."""
  print(f"{'impl':<22}{'tokens/s':>10}{'step s':>9}{'first step s':>14}{'peak RSS MB':>13}")
  for impl, name in names.items():
    r = rows[impl]
    step = sorted(r["times"])[len(r["times"]) // 2]
    r["tps"] = r["tokens"] / step
    print(f"{name:<22}{r['tps']:>10.0f}{step:>9.2f}{r['first']:>14.2f}{r['peak_mb']:>13.0f}")
  ratio = rows["jax"]["tps"] / rows["torch"]["tps"]
  print(f"speed-up (tokens/s ours / HF): {ratio:.2f}x")
  return ratio


def time_steps(step, steps: int) -> tuple[float, list[float]]:
  """Seconds of the first call (compilation included) and of each of `steps` further calls;
  `step` must block until its work is done."""
  t0 = time.perf_counter()
  step()
  first = time.perf_counter() - t0
  times = []
  for _ in range(steps):
    t0 = time.perf_counter()
    step()
    times.append(time.perf_counter() - t0)
  return first, times


def report(first: float, times: list[float], tokens: int) -> None:
  """A child process's result line, read by run_children."""
  print(json.dumps(dict(first=first, times=times, tokens=tokens,
                        peak_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)))


def comparison_args(doc: str, run_jax, run_torch, **extra: int) -> argparse.Namespace | None:
  """The shared command line of the ours-vs-HF benchmarks (--steps, --frames, --size, plus `extra`
  integer flags). In a child process (hidden --impl/--hf_dir) it runs that implementation, reports
  and returns None; in the parent it returns the parsed arguments."""
  p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
  for name, default in dict(steps=3, **extra, frames=16, size=224).items():
    p.add_argument(f"--{name}", type=int, default=default)
  p.add_argument("--impl", choices=["jax", "torch"], help=argparse.SUPPRESS)
  p.add_argument("--hf_dir", help=argparse.SUPPRESS)
  args = p.parse_args()
  if args.impl:
    report(*(run_jax if args.impl == "jax" else run_torch)(args.hf_dir, args))
    return None
  return args


def _newest_trace(trace_dir: str):
  traces = sorted(glob.glob(f"{trace_dir}/**/*perfetto_trace.json.gz", recursive=True), key=os.path.getmtime)
  if not traces:
    return None
  trace = json.load(gzip.open(traces[-1]))
  return trace["traceEvents"] if isinstance(trace, dict) else trace


def _device_events(events) -> list[dict]:
  """The events of the trace's GPU processes (their metadata too); none on a CPU trace."""
  gpus = {e["pid"] for e in events if e.get("ph") == "M" and e.get("name") == "process_name"
          and "gpu" in e.get("args", {}).get("name", "").lower()}
  return [e for e in events if e.get("pid") in gpus]


def _op_key(name: str) -> str:
  return name.rsplit(".", 1)[0] if name.rsplit(".", 1)[-1].isdigit() else name


def top_trace_ops(trace_dir: str, top: int = 25) -> list[str]:
  """Where a traced step's time went, from the newest jax.profiler perfetto trace under
  `trace_dir`. A GPU trace: `gpu_trace.report` (one step's kernels by kind, how busy the device
  was, the longest kernels). A CPU trace: the host ops that took longest, summed over the traced
  steps (numbered clones of a fusion together; Python and runtime events left out)."""
  events = _newest_trace(trace_dir)
  if events is None:
    return [f"no perfetto trace under {trace_dir}"]
  device = _device_events(events)
  if device:
    import gpu_trace
    return gpu_trace.report(device, top=top)
  seconds, count = collections.Counter(), collections.Counter()
  for e in events:
    name = e.get("name", "")
    if e.get("ph") != "X" or "::" in name or name.startswith(("$", "end: ", "Thunk", "PjitFunction", "ParseArguments")):
      continue
    seconds[_op_key(name)] += e["dur"] / 1e6
    count[_op_key(name)] += 1
  total = sum(seconds.values())
  return [f"{s:8.3f} s {s / total:6.1%} x{count[k]:<5d} {k[:90]}" for k, s in seconds.most_common(top)]


def save_device_trace(trace_dir: str, path: str) -> int:
  """The newest trace's device events (GPU processes; their metadata too) as gzipped json at
  `path`, small enough to bring home from a lent machine (read by gpu_trace.py). Returns the
  number of events kept."""
  kept = _device_events(_newest_trace(trace_dir) or [])
  with gzip.open(path, "wt") as f:
    json.dump(kept, f)
  return len(kept)
