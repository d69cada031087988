r"""The sampler against Hugging Face's `generate` (its KV cache), same weights, same prompts, same cores.

  python benchmarks/sampler.py [--frames 8] [--size 224] [--decode_tokens 64] [--rollout_tokens 128]

Prompts: text around a video (the ~75M model of model_forward.py, random weights, no stop token, so
every row runs the whole budget). Two measurements, each implementation in its own process:
  decode:  2 prompts, greedy: tokens/s of the decode alone, (t(N) - t(1)) over (N - 1) steps a row;
  rollout: 4 prompts x G = 8 samples (temperature 0.8, top_p 0.9), as a GRPO step draws them: ours
           encodes each prompt once (vision tower and prefill) and samples 8 times from it; HF's
           `num_return_sequences=8` expands the inputs to 32 rows first.
Prints a table and the ratios (ours / HF); the times are the median of `--repeats` after a warm-up
call (compilation).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

from model_forward import bench_config, make_inputs  # noqa: E402

NO_STOP = 31999  # an id these random weights do not reach first: every row runs the whole budget


def _median_time(fn, repeats: int) -> float:
  fn()  # compile / warm up
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def run_jax(hf_dir: str, args) -> dict:
  import jax

  from rewatch_jax import hf
  from rewatch_jax.generate import generate_hf_inputs
  model = hf.load_pretrained(hf_dir)
  out = {}
  decode = make_inputs(model.config, args.frames, args.size, batch=2)
  rollout = make_inputs(model.config, args.frames, args.size, batch=4)
  block = lambda g: jax.block_until_ready(g.tokens)
  for n in (1, args.decode_tokens):
    out[f"decode_{n}"] = _median_time(lambda n=n: block(generate_hf_inputs(
        model, max_new_tokens=n, eos_id=NO_STOP, **decode)), args.repeats)
  out["rollout"] = _median_time(lambda: block(generate_hf_inputs(
      model, max_new_tokens=args.rollout_tokens, eos_id=NO_STOP, num_samples=8, temperature=0.8, top_p=0.9,
      **rollout)), args.repeats)
  return out


def run_torch(hf_dir: str, args) -> dict:
  import torch
  import transformers
  torch.set_num_threads(os.cpu_count())
  model = transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(hf_dir, dtype=torch.float32).eval()
  cfg = bench_config()

  def call(raw, n, **kw):
    batch = {k: torch.from_numpy(v) for k, v in raw.items()}
    types = torch.zeros_like(batch["input_ids"])
    types[batch["input_ids"] == cfg.video_token_id] = 2
    with torch.no_grad():
      model.generate(**batch, mm_token_type_ids=types, max_new_tokens=n, min_new_tokens=n, eos_token_id=NO_STOP,
                     pad_token_id=NO_STOP, **kw)

  decode = make_inputs(cfg, args.frames, args.size, batch=2)
  rollout = make_inputs(cfg, args.frames, args.size, batch=4)
  out = {f"decode_{n}": _median_time(lambda n=n: call(decode, n, do_sample=False), args.repeats)
         for n in (1, args.decode_tokens)}
  out["rollout"] = _median_time(lambda: call(rollout, args.rollout_tokens, do_sample=True, temperature=0.8, top_p=0.9,
                                             top_k=0, num_return_sequences=8), args.repeats)
  return out


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--frames", type=int, default=8)
  p.add_argument("--size", type=int, default=224)
  p.add_argument("--decode_tokens", type=int, default=64)
  p.add_argument("--rollout_tokens", type=int, default=128)
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--impl", choices=["jax", "torch"], help=argparse.SUPPRESS)
  p.add_argument("--hf_dir", help=argparse.SUPPRESS)
  args = p.parse_args()
  if args.impl:
    print(json.dumps((run_jax if args.impl == "jax" else run_torch)(args.hf_dir, args)))
    return
  from flax import nnx

  from rewatch_jax import hf, host
  from rewatch_jax.models import Qwen25VL
  flags = [f"--{k}={v}" for k, v in vars(args).items() if k not in ("impl", "hf_dir")]
  rows = {}
  with tempfile.TemporaryDirectory() as tmp:
    hf.save_pretrained(Qwen25VL(bench_config(), rngs=nnx.Rngs(0)), tmp)
    for impl in ("jax", "torch"):
      env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
      env = host.cpu_environ(env) or env  # launch/train.py's malloc setting, for both alike
      out = subprocess.run([sys.executable, __file__, "--impl", impl, "--hf_dir", tmp, *flags], capture_output=True,
                           text=True, env=env)
      if out.returncode:
        sys.exit(f"{impl} failed:\n{out.stderr[-4000:]}")
      rows[impl] = json.loads(out.stdout.strip().splitlines()[-1])
  n, g = args.decode_tokens, args.rollout_tokens
  rate = lambda r: 2 * (n - 1) / (r[f"decode_{n}"] - r["decode_1"])
  print(f"\n{args.frames}-frame {args.size}px video prompts, the ~75M model, {os.cpu_count()} cores")
  print(f"{'impl':<24}{'prefill+1 s':>12}{'decode tok/s':>14}{'rollout s':>11}{'rollout tok/s':>15}")
  for impl, name in (("jax", "rewatch-jax (XLA)"), ("torch", "HF generate (torch)")):
    r = rows[impl]
    print(f"{name:<24}{r['decode_1']:>12.2f}{rate(r):>14.1f}{r['rollout']:>11.2f}{32 * g / r['rollout']:>15.1f}")
  speedup = rows["torch"]["rollout"] / rows["jax"]["rollout"]
  print(f"decode tokens/s ours / HF: {rate(rows['jax']) / rate(rows['torch']):.2f}x; "
        f"rollout (4 prompts x 8 samples x {g} tokens) ours / HF: {speedup:.2f}x")


if __name__ == "__main__":
  main()
