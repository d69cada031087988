r"""Prepare datasets.

  python launch/prepare.py --toyworld 200 --out /tmp/toy        # the embedded procedural world

writes out/videos/*.mp4 and ReWatch JSONL records per split (train_/test_ caption, qa, cot,
cot_hallucinated). Re-running reuses videos that already exist.
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_integer("toyworld", None, "Number of toy-world videos to generate.")
flags.DEFINE_string("out", None, "Output directory.")
flags.DEFINE_integer("seed", 0, "First toy-world seed (video i uses seed + i).")
flags.DEFINE_float("test_fraction", 0.2, "Share of toy-world videos held out as the test split.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if FLAGS.toyworld is None:
    raise app.UsageError("give --toyworld N (preparing --records into ArrayRecord is not built yet)")
  if not FLAGS.out:
    raise app.UsageError("--out is required")
  if FLAGS.toyworld < 1:
    raise app.UsageError("--toyworld must be >= 1")
  from rewatch_jax.data import toyworld
  t0 = time.perf_counter()
  stats = toyworld.build(FLAGS.out, FLAGS.toyworld, seed=FLAGS.seed, test_fraction=FLAGS.test_fraction)
  print(f"toy world: {FLAGS.toyworld} videos in {time.perf_counter() - t0:.1f}s -> {FLAGS.out}")
  for name, n in stats.items():
    print(f"  {name:<24} {n}")


if __name__ == "__main__":
  app.run(main)
