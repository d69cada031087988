r"""Where the CPU forward+backward time goes, by XLA op and the source op it came from.

  python benchmarks/profile_step.py [--part vision|text|full|forward] [--steps 2] [--top 30]

The model_forward.py config and inputs; one jitted value-and-grad of the chosen part (`vision`:
the tower alone; `text`: the decoder on random input embeddings; `full`: logits + loss; `forward`:
no gradient, the vision tower and the prefill as model_forward.py's forward row runs them), traced
with jax.profiler after a warm-up call. Each XLA thunk in the trace is mapped to the `op_name`
metadata of its fusion in the optimized HLO dump, so a row reads like
`0.370 s  copy_bitcast_fusion  transpose(jvp(jit(silu)))` (per step, summed over threads: rows can
add up to more than the wall time). This is how the attention gap of session 5 was found
(benchmarks/RESULTS.md). Noisy VMs: compare parts within one run, not across runs.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--part", choices=["vision", "text", "full", "forward"], default="full")
  p.add_argument("--steps", type=int, default=2)
  p.add_argument("--top", type=int, default=30)
  p.add_argument("--frames", type=int, default=16)
  p.add_argument("--size", type=int, default=224)
  args = p.parse_args()
  work = tempfile.mkdtemp(prefix="profile_step_")
  os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_dump_to={work}/hlo --xla_dump_hlo_pass_re=NONE"

  import jax
  import jax.numpy as jnp
  import optax
  from flax import nnx
  from model_forward import bench_config, make_inputs

  from rewatch_jax.models import Qwen25VL, from_hf_inputs

  cfg = bench_config()
  graphdef, params = nnx.split(Qwen25VL(cfg, rngs=nnx.Rngs(0)))
  inputs = jax.tree.map(jnp.asarray, from_hf_inputs(cfg, **make_inputs(cfg, args.frames, args.size)))
  embeds = jax.random.normal(jax.random.key(0), (*inputs.input_ids.shape, cfg.text.hidden_size))

  def loss(params):
    model = nnx.merge(graphdef, params)
    if args.part == "vision":
      y = model.visual(inputs.pixel_values, inputs.vision_rotary_ids, inputs.window_segment,
                       inputs.frame_segment, inputs.frame_block)
      return jnp.sum(y * y)
    if args.part == "text":
      h, _ = model.text(embeds, inputs.positions, inputs.attention_mask)
      return jnp.sum(h * h)
    logits = model(inputs)[:, :-1]
    return optax.softmax_cross_entropy_with_integer_labels(logits, inputs.input_ids[:, 1:]).mean()

  def forward(params):  # named like the loss: the dump below is found by "jit_loss"
    model = nnx.merge(graphdef, params)
    hidden, cache = model.prefill(inputs, 1, 1)
    return model.text.logits(hidden[:, -1]), cache

  forward.__name__ = "loss"
  step = jax.jit(forward if args.part == "forward" else jax.value_and_grad(loss))
  jax.block_until_ready(step(params))
  with jax.profiler.trace(f"{work}/trace", create_perfetto_trace=True):
    t0 = time.perf_counter()
    for _ in range(args.steps):
      jax.block_until_ready(step(params))
    wall = (time.perf_counter() - t0) / args.steps

  dumps = glob.glob(f"{work}/hlo/*jit_loss*cpu_after_optimizations.txt")
  if not dumps:
    sys.exit(f"no optimized CPU HLO dump of the step under {work}/hlo (is JAX running on the CPU?)")
  with open(max(dumps, key=os.path.getmtime)) as f:
    hlo = f.read()
  source = {m.group(1): re.sub(r"^jit\(\w+\)/", "", m.group(2))
            for m in re.finditer(r"%([\w.\-]+) = [^\n]*?metadata=\{op_name=\"([^\"]+)\"", hlo)}
  traces = glob.glob(f"{work}/trace/**/*perfetto_trace.json.gz", recursive=True)
  if not traces:
    sys.exit(f"jax.profiler wrote no perfetto trace under {work}/trace")
  trace = json.load(gzip.open(traces[0]))
  seconds = collections.Counter()
  for event in trace["traceEvents"] if isinstance(trace, dict) else trace:
    if event.get("ph") == "X" and event["name"] in source:
      kind = re.sub(r"\.\d+$", "", event["name"])
      seconds[kind, source[event["name"]]] += event["dur"] / 1e6 / args.steps
  print(f"{args.part}: {wall:.2f} s/step wall, {sum(seconds.values()):.2f} s/step in XLA ops "
        f"(summed over threads); HLO and trace in {work}")
  for (kind, op), s in seconds.most_common(args.top):
    print(f"{s:7.3f} s  {kind:28s} {op[:100]}")


if __name__ == "__main__":
  main()
