r"""Where a GPU train step's time goes, read from what `gpu_session.sh` brings home: the device
trace (`*_device_trace.json.gz`) and, with HLO=1, the optimised HLO (`hlo_*.txt.gz`).

  python benchmarks/gpu_trace.py jax_device_trace.json.gz [hlo_jax.txt.gz] [--top 40]

Prints one traced step (the trace holds two, split at the idle gap between them): time by kind
(cuBLAS / cuDNN library kernels, XLA's Triton matmul fusions, other XLA fusions), then the longest
kernels with the HLO op they ran: a fusion by its name, a library kernel (cuBLAS, cuDNN) by the
custom-call it belongs to, found in schedule order after the fusion that ran before it. Inside CUDA
graphs every kernel reports the same `hlo_op`, so this matching is what says which matmul is slow
(session 14: the vision MLP's 3420-wide input gradients on an Ampere-era cuBLAS kernel).
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import re

_FUSION = re.compile(r"^(loop_|input_|fusion|wrapped_|gemm_fusion|copy|transpose|triton|concatenate|dynamic|slice|"
                     r"bitcast|reduce|scatter|gather)")
_DEF = re.compile(r"\s+%([\w.\-]+) = ")


def kind(name: str) -> str:
  if name.startswith(("cudnn", "void cudnn")):
    return "cuDNN"
  if name.startswith("gemm_fusion") or name.startswith("triton"):
    return "XLA Triton matmul fusions"
  if _FUSION.match(name) or name.startswith("Memset"):
    return "other XLA kernels"
  return "cuBLAS and other library kernels"


def one_step(events: list[dict], min_gap_us: float = 1000.0) -> list[dict]:
  """The kernels of the first traced step, in time order: up to the longest idle gap if that is
  over `min_gap_us` (between steps the device waits for the host; within one, microseconds)."""
  x = sorted((e for e in events if e.get("ph") == "X"), key=lambda e: e["ts"])
  if len(x) < 2:
    return x
  gap, cut = max((x[i + 1]["ts"] - x[i]["ts"] - x[i]["dur"], i) for i in range(len(x) - 1))
  return x[:cut + 1] if gap > min_gap_us else x


def hlo_index(text: str) -> tuple[list[str], dict[str, int]]:
  """HLO lines, and each instruction's first line, by the kernel-style name (dots as underscores)."""
  lines = text.splitlines()
  where = {}
  for i, line in enumerate(lines):
    m = _DEF.match(line)
    if m:
      where.setdefault(m.group(1).replace(".", "_").replace("-", "_"), i)
  return lines, where


def describe(line: str) -> str:
  out = re.search(r"= \(?([a-z0-9]+\[[\d,]*\])", line)
  operands = re.search(r"custom-call\((.*?)\), custom_call_target", line) or re.search(r"fusion\((.*?)\), kind", line)
  op = re.search(r'op_name="([^"]+)"', line)
  args = re.sub(r"%([\w.\-]+?)(\.\d+)?(#\d+)?(?=[,)]|$)", r"\1", operands.group(1)) if operands else ""
  return f"{out.group(1) if out else '?'} <- ({args[:70]}) [{op.group(1)[-50:] if op else ''}]"


def attribute(step: list[dict], lines: list[str], where: dict[str, int]) -> list[str]:
  """Each kernel's HLO description (see the module docstring), '' where it cannot be found."""
  found, last, k = [], None, 0
  for e in step:
    name = e["name"]
    if kind(name) in ("XLA Triton matmul fusions", "other XLA kernels"):  # named after its HLO op
      last, k = name, 0
      found.append(describe(lines[where[name]]) if name in where else "")
      continue
    desc = ""
    if last in where:
      seen = 0
      for line in lines[where[last] + 1:where[last] + 400]:
        if "custom-call(" in line and ("__cublas" in line or "__cudnn" in line):
          if seen == k:
            desc = describe(line)
            break
          seen += 1
    k += 1
    found.append(desc)
  return found


def report(events: list[dict], hlo_text: str = "", top: int = 40) -> list[str]:
  step = one_step(events)
  if not step:
    return ["no kernels in the trace"]
  span = (step[-1]["ts"] + step[-1]["dur"] - step[0]["ts"]) / 1e3
  by_kind, count = collections.Counter(), collections.Counter()
  for e in step:
    by_kind[kind(e["name"])] += e["dur"] / 1e3
    count[kind(e["name"])] += 1
  out = [f"one step: {len(step)} kernels over {span:.1f} ms, {sum(by_kind.values()):.1f} ms of them busy"]
  out += [f"  {ms:8.2f} ms x{count[k]:<5d} {k}" for k, ms in by_kind.most_common()]
  descs = attribute(step, *hlo_index(hlo_text)) if hlo_text else [""] * len(step)
  total, calls = collections.Counter(), collections.Counter()
  for e, d in zip(step, descs):
    key = (e["name"][:60], d)
    total[key] += e["dur"] / 1e3
    calls[key] += 1
  out.append(f"longest kernels ({'with their HLO op' if hlo_text else 'no HLO given'}):")
  out += [f"  {ms:8.2f} ms x{calls[k]:<4d} {k[0]:<60s} {k[1]}" for k, ms in total.most_common(top)]
  return out


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("trace")
  p.add_argument("hlo", nargs="?", default="")
  p.add_argument("--top", type=int, default=40)
  args = p.parse_args()
  events = json.load(gzip.open(args.trace, "rt"))
  hlo = gzip.open(args.hlo, "rt").read() if args.hlo.endswith(".gz") else open(args.hlo).read() if args.hlo else ""
  print("\n".join(report(events, hlo, args.top)))


if __name__ == "__main__":
  main()
