r"""The demo's SFT steps with one task per batch (`data.batch_by_task`, default) against tasks mixed
within a batch: padded tokens per step, steps/s and compilations, same data, model and optimizer.

  python benchmarks/sft_batching.py [--videos 40] [--steps 30]

Prepares a small toy world with configs/demo.py's settings in a temporary directory, then times
`--steps` train steps (after one warm-up batch per bucket) of the demo model for each setting.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def run(config, workdir: str, by_task: bool, steps: int) -> dict:
  import jax
  import numpy as np

  from rewatch_jax.data import pipeline
  from rewatch_jax.models.sharding import axis_rules
  from rewatch_jax.train import resolve, sft
  from rewatch_jax.train import state as train_state
  config.data.batch_by_task = by_task
  run = resolve.resolve(config, workdir)
  stage, mesh = run.stages[-1], run.mesh
  trainable = train_state.setup(train_state.build_model(run.config, run.model, mesh), stage.optimizer, steps, mesh, 0)
  step, state = sft.jit_train_step(trainable, 1, len(stage.tasks)), trainable.state
  data = pipeline.sft_dataset(sft.pipeline_config(run, stage), run.model)
  batches = [pipeline.to_global(b, mesh)[0] for b, _ in zip(data, range(steps))]
  with axis_rules(mesh):
    for length in sorted({b["inputs"].input_ids.shape[1] for b in batches}):  # compile every bucket first
      state, m = step(state, next(b for b in batches if b["inputs"].input_ids.shape[1] == length))
    jax.block_until_ready(m)
    t0 = time.perf_counter()
    for b in batches:
      state, m = step(state, b)
    jax.block_until_ready(m)
    seconds = time.perf_counter() - t0
  tokens = np.mean([b["inputs"].input_ids.size for b in batches])
  return dict(tokens=tokens, steps_per_s=steps / seconds, compiles=step._cache_size())


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--videos", type=int, default=40)
  p.add_argument("--steps", type=int, default=30)
  args = p.parse_args()
  from absl import flags
  flags.FLAGS.mark_as_parsed()
  from configs import demo
  with tempfile.TemporaryDirectory() as tmp:
    config = demo.get_config("sft")
    config.demo.videos = args.videos
    rows = {name: run(config, tmp, by_task, args.steps) for name, by_task in (("mixed", False), ("by task", True))}
  print(f"\ndemo SFT steps ({args.steps}, batch {config.data.batch_size}, buckets "
        f"{[b['length'] for b in config.data.buckets]}), {args.videos} toy-world videos")
  print(f"{'batches':<10}{'tokens/step':>13}{'steps/s':>10}{'compilations':>14}")
  for name, r in rows.items():
    print(f"{name:<10}{r['tokens']:>13.0f}{r['steps_per_s']:>10.2f}{r['compiles']:>14}")
  mixed, by_task = rows["mixed"], rows["by task"]
  print(f"by task / mixed: {by_task['tokens'] / mixed['tokens']:.2f}x tokens per step, "
        f"{by_task['steps_per_s'] / mixed['steps_per_s']:.2f}x steps/s")


if __name__ == "__main__":
  main()
