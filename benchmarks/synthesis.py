r"""Synthesis throughput against a rate-limited endpoint with latency, and with faults.

  python benchmarks/synthesis.py [--videos 6] [--latency 0.2] [--rpm 600] [--fault_rate 0.2]

The whole pipeline (configs/synthesis.py:toy) on a small toy world, against the oracle server
(launch/serve.py, its own process, on loopback) that waits `--latency` s per request and
answers 429 + Retry-After above `--rpm` requests a minute (a sliding minute, as providers count):
  sequential   one request at a time, no server limit (the caption and QA stages: its rate);
  limited      the client as configured (32 at once) against the limit: per minute, the requests
               the server answered and those it admitted (answered or failed by a fault: both use
               the limit), over the whole run and after its first minute, and its rate-limit 429s;
  faults       the same with `--fault_rate` of the requests failing (every fault class but the
               content filter, which fails an item for good), to the same final records;
  unlimited    the client against the same latency and no limit: how far concurrency goes.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time

import httpx

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


class Server:
  """launch/serve.py in its own process (a core of its own, as a real endpoint), its /v1/stats
  sampled every `every` seconds: [(seconds since the start, stats)]."""

  def __init__(self, world: str, every: float = 1.0, **flags):
    with socket.socket() as sock:
      sock.bind(("127.0.0.1", 0))
      self.port = sock.getsockname()[1]
    self.url, self.every, self.samples = f"http://127.0.0.1:{self.port}/v1", every, []
    args = [f"--{k}={','.join(v) if isinstance(v, tuple) else v}" for k, v in flags.items()]
    self.proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "launch", "serve.py"), "--toyworld", world,
                                  "--port", str(self.port), *args],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while True:
      try:
        httpx.get(self.url + "/models")
        break
      except httpx.TransportError:
        if self.proc.poll() is not None:
          raise RuntimeError("launch/serve.py did not start") from None
        time.sleep(0.2)
    self.stop = threading.Event()
    self.t0 = time.monotonic()
    self.thread = threading.Thread(target=self._poll, daemon=True)
    self.thread.start()

  def _poll(self):
    while not self.stop.is_set():
      self.samples.append((time.monotonic() - self.t0, httpx.get(self.url + "/stats").json()))
      self.stop.wait(self.every)

  def close(self):
    self.stop.set()
    self.thread.join()
    self.samples.append((time.monotonic() - self.t0, httpx.get(self.url + "/stats").json()))
    self.proc.terminate()
    self.proc.wait()

  def rate(self, key: str, start: float = 0.0) -> float:
    """`key` a minute, from the first sample at or after `start` to the last."""
    first = next((t, s) for t, s in self.samples if t >= start)
    (t1, s1) = self.samples[-1]
    return (s1.get(key, 0) - first[1].get(key, 0)) / max(1e-9, t1 - first[0]) * 60

  def count(self, key: str, start: float = 0.0) -> int:
    first = next(s for t, s in self.samples if t >= start)
    return self.samples[-1][1].get(key, 0) - first.get(key, 0)


def run(world: str, out: str, server: dict, client: dict, stages=None) -> dict:
  from configs import synthesis as synthesis_config
  from data_synthesis.pipeline import Synthesis

  srv = Server(world, **server)
  try:
    c = synthesis_config.get_config("toy")
    c.client.base_url, c.client.max_retries = srv.url, 12
    c.client.update(client)
    t = time.monotonic()
    Synthesis(c, world, out).run(stages or ("caption", "qa", "filter", "mc", "cot"))
    seconds = time.monotonic() - t
  finally:
    srv.close()
  late = 60.0 if seconds > 90 else None
  return dict(answered=srv.rate("answered"), admitted=srv.rate("requests") - srv.rate("rate_limited"),
              answered_late=srv.rate("answered", late) if late else None,
              admitted_late=srv.rate("requests", late) - srv.rate("rate_limited", late) if late else None,
              limited=srv.count("rate_limited"), limited_late=srv.count("rate_limited", late) if late else None,
              seconds=seconds)


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--videos", type=int, default=6)
  p.add_argument("--latency", type=float, default=0.2)
  p.add_argument("--rpm", type=float, default=600)
  p.add_argument("--fault_rate", type=float, default=0.2)
  args = p.parse_args()
  import logging
  logging.getLogger("httpx").setLevel(logging.WARNING)
  from rewatch_jax.demo import toyworld
  from rewatch_jax.serve.app import FAULTS
  from tests.test_synthesis import contents

  root = tempfile.mkdtemp(prefix="synthesis_bench_")
  world = os.path.join(root, "toy")
  toyworld.build(world, args.videos, seed=0, test_fraction=0.25, duration=(8, 24))
  rows = {}
  rows["sequential (1 at a time)"] = run(world, os.path.join(root, "sequential"), dict(latency=args.latency),
                                         dict(max_concurrency=1), stages=("caption", "qa"))
  limit = dict(latency=args.latency, requests_per_minute=args.rpm)
  rows[f"limited ({args.rpm:.0f}/min limit)"] = run(world, os.path.join(root, "limited"), limit, {})
  kinds = tuple(k for k in FAULTS if k != "content_filter")  # (a content filter fails its item for good)
  rows[f"{args.fault_rate:.0%} faults, same limit"] = run(
      world, os.path.join(root, "faults"), dict(limit, fault_rate=args.fault_rate, faults=kinds, slow_seconds=3.0), {})
  rows["unlimited (no server limit)"] = run(world, os.path.join(root, "unlimited"), dict(latency=args.latency), {})
  same = contents(os.path.join(root, "limited")) == contents(os.path.join(root, "faults"))
  print(f"{args.videos} toy videos, {args.latency * 1000:.0f} ms a request, the toy config's client (32 at once); "
        "per minute, from the server's counts; 'late': after the first minute")
  print(f"{'run':28s} {'answered':>9s} {'admitted':>9s} {'ans. late':>9s} {'adm. late':>9s} {'429 limit':>9s} "
        f"{'429 late':>8s} {'seconds':>8s}")
  fmt = lambda x, f: format(x, f) if x is not None else "-"
  for name, r in rows.items():
    print(f"{name:28s} {r['answered']:9.0f} {r['admitted']:9.0f} {fmt(r['answered_late'], '9.0f')} "
          f"{fmt(r['admitted_late'], '9.0f')} {r['limited']:9d} {fmt(r['limited_late'], '8d')} {r['seconds']:8.1f}")
  seq, (lim, flt, free) = rows["sequential (1 at a time)"]["answered"], list(rows.values())[1:]
  print(f"limited: {100 * lim['admitted'] / args.rpm:.1f}% of the limit used over the run"
        + (f", {100 * lim['admitted_late'] / args.rpm:.1f}% after the first minute" if lim["admitted_late"] else ""))
  print(f"with faults: {100 * flt['admitted'] / args.rpm:.1f}% of the limit used"
        + (f", {100 * flt['admitted_late'] / args.rpm:.1f}% after the first minute" if flt["admitted_late"] else ""))
  print(f"vs sequential: limited {lim['answered'] / seq:.1f}x (the limit allows {args.rpm / seq:.1f}x), "
        f"unlimited {free['answered'] / seq:.1f}x")
  print(f"records with {args.fault_rate:.0%} faults identical to the clean run's: {same}")


if __name__ == "__main__":
  main()
