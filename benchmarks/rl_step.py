r"""Where an RL step's time goes: rollout, rewards, reference, update (train/grpo.py's own split).

  python benchmarks/rl_step.py [--videos 8] [--steps 4] [--samples 8] [--new_tokens 64]

Two models on one small toy world, each running the GRPO stage as `launch/train.py` does (8
prompts a step, `--samples` each, `--new_tokens` at most, the reference on):
  demo:       the demo's model (configs/demo.py: 4 layers of 128, its 1,024-token vocabulary);
  tiny-qwen:  the 7B recipe's tiny variant: the tiny architecture with the real 151,936-token
              vocabulary (data tokenised with the Qwen tokenizer), where the vocabulary's softmax
              weighs, fp32 master weights, bf16 compute, full remat.
Prints the median seconds of each part over the steps after the first (compilation) and the
rollout's share. Random weights answer nothing: rewards are 0 and responses run to the budget, the
worst case for the sampler.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

PARTS = ("rollout", "rewards", "reference", "update")


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--videos", type=int, default=8)
  p.add_argument("--steps", type=int, default=4)
  p.add_argument("--samples", type=int, default=8)
  p.add_argument("--new_tokens", type=int, default=64)
  p.add_argument("--models", default="demo,tiny-qwen")
  p.add_argument("--workdir", default="")
  args = p.parse_args()

  from configs import demo
  from rewatch_jax import host
  from rewatch_jax.data import records, tfds_rewatch
  from rewatch_jax.data.video import VideoSpec
  from rewatch_jax.demo import hooks
  from rewatch_jax.train import grpo
  from rewatch_jax.train.config import sft_recipe
  from rewatch_jax.train.resolve import resolve
  host.show_library_logs(False)

  work = args.workdir or tempfile.mkdtemp(prefix="rl_step_")
  c = demo.get_config("sft")
  c.demo.videos, c.demo.test_fraction = args.videos, 0.25
  spec = VideoSpec(**c.video_spec)
  toy = hooks.prepare_toyworld(c.demo, spec, work)
  raw = os.path.join(work, "data", "toy")
  qa = list(records.read_jsonl(os.path.join(raw, "train_qa.jsonl")))
  captions = list(records.read_jsonl(os.path.join(raw, "train_caption.jsonl")))
  rows = {}
  for name in args.models.split(","):
    if name == "demo":
      cfg, data, tokenizer = demo.get_config("sft"), toy.data_dir, toy.tokenizer
    else:  # the tiny architecture, the Qwen vocabulary and tokenizer
      cfg, data, tokenizer = sft_recipe("7b", "tiny"), os.path.join(work, "qwen"), ""
      cfg.video_spec.update(c.video_spec.to_dict())
    if not tfds_rewatch.set_dirs(data, "rl"):
      tfds_rewatch.prepare(data, "rl", qa, raw, spec, kind="rl", tokenizer=tokenizer or None, captions=captions)
    cfg.hooks, cfg.data.dir, cfg.tokenizer = "", data, tokenizer
    cfg.total_steps, cfg.epochs, cfg.log_every_steps, cfg.checkpoint_every_steps = 0, 0.0, 1, 10_000
    cfg.rl.update(dict(steps=args.steps + 1, prompts_per_step=8, samples=args.samples, arms=(), eval_set="",
                       max_new_tokens=args.new_tokens, beta=0.01,
                       buckets=[dict(length=320, patches=256, frame_block=64, loss_tokens=1)]))
    run = resolve(cfg, os.path.join(work, f"run_{name}"))
    grpo.train(run, run.stages[-1])
    with open(os.path.join(work, f"run_{name}", "rl", "metrics.jsonl")) as f:
      steps = [json.loads(line) for line in f][1:]  # past compilation
    rows[name] = {part: sorted(s[f"time_{part}"] for s in steps)[len(steps) // 2] for part in PARTS}
    rows[name]["tokens"] = sorted(s["response_length"] for s in steps)[len(steps) // 2]
  print(f"\n8 prompts x {args.samples} samples, <= {args.new_tokens} new tokens, median of {args.steps} steps "
        f"(CPU, {os.cpu_count()} cores)")
  print(f"{'model':<12}" + "".join(f"{part + ' s':>13}" for part in PARTS) + f"{'step s':>9}{'rollout %':>11}"
        f"{'tokens':>8}")
  for name, r in rows.items():
    total = sum(r[p] for p in PARTS)
    share = 100 * r["rollout"] / total
    print(f"{name:<12}" + "".join(f"{r[p]:>13.3f}" for p in PARTS) + f"{total:>9.2f}{share:>10.0f}%{r['tokens']:>8.0f}")


if __name__ == "__main__":
  main()
