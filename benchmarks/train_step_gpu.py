r"""SFT train step of a ~2B Qwen2.5-VL computing in bf16 on one GPU: ours (jitted, cuDNN flash attention in the
language model) against Hugging Face transformers + torch AdamW (SDPA attention), same config and
inputs, each in its own process. Prints tokens/s, step time, compile time, peak device memory and
MFU (model FLOPs from `rewatch_jax.train.metrics.train_flops` over the device's dense bf16 peak).

  python benchmarks/train_step_gpu.py [--steps 5] [--frames 32] [--size 448] [--impls jax,torch,jax_unpadded,jax_xla]

Model: Qwen2.5-1.5B's language model (28 x 1536, GQA 12/2, vocab 151,936, tied embeddings) under
the released Qwen2.5-VL vision tower (32 x 1280, 112 px windows, 4 full-attention blocks): 2.2B
parameters; float32 master weights and AdamW moments with bf16 compute, as the recipes train (torch:
fp32 weights under bf16 autocast, as HF Trainer's `bf16=True`); `--param_dtype bfloat16` trains bf16
weights and moments on both sides, as the runs in RESULTS.md before 2026-11-30 did (at the recipes'
learning rate such weights do not move: `train.state.frozen_fraction`). One example per step: a
32-frame 448x448 video (16,384 patches -> 4,096 visual tokens) in an 8,192-token sequence, the
last 2,048 tokens trained. `jax_xla` is ours with the einsum attention, to show the kernel's share;
`jax_unpadded` ours with `pad_mlp_to=1` (the vision MLP's 3420 units unpadded), to show that one's.
Before timing, the jax child checks that cuDNN and XLA attention agree on a small model.
`--small` runs the same code at a CPU-sized config (to try the script without a GPU).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

from common import save_device_trace, time_steps, top_trace_ops  # noqa: E402
from model_forward import bench_config as small_config  # noqa: E402
from model_forward import make_inputs  # noqa: E402


def model_config(args, attention: str):
  from rewatch_jax.models import ModelConfig, TextConfig, VisionConfig
  runtime = dict(param_dtype=args.param_dtype, dtype="bfloat16", remat=args.remat, attention=attention,
                 pad_mlp_to=args.pad_mlp_to)
  if args.small:
    return small_config().replace(**runtime).validate()
  return ModelConfig(
      text=TextConfig(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                      num_attention_heads=12, num_key_value_heads=2, tie_word_embeddings=True),
      vision=VisionConfig(out_hidden_size=1536), **runtime).validate()


def example(cfg, args):
  """HF-processor-style inputs of exactly `args.length` tokens, and the trained positions."""
  n_video = args.frames // 2 * (args.size // 14) ** 2 // 4
  text = args.length - n_video - 2
  raw = make_inputs(cfg, args.frames, args.size, batch=1, text=text)
  ids = raw["input_ids"]
  pos = np.arange(ids.shape[1] - 1 - args.trained, ids.shape[1] - 1)
  return raw, pos


def run_jax(args, impl: str) -> dict:
  import jax
  import jax.numpy as jnp
  from flax import nnx
  from train_step import time_train_step

  from rewatch_jax.models import Qwen25VL, from_hf_inputs
  jax.config.update("jax_explain_cache_misses", True)  # a retrace would show in the table's stderr
  attention = "xla" if impl == "jax_xla" else "cudnn"
  if impl == "jax_unpadded":
    args.pad_mlp_to = 1
  if attention == "cudnn" and not args.no_check:
    check_cudnn(args)
  cfg = model_config(args, attention)
  raw, pos = example(cfg, args)
  inputs = from_hf_inputs(cfg, **raw)
  batch = dict(inputs=inputs, loss_index=pos[None].astype(np.int32),
               loss_targets=raw["input_ids"][:, pos + 1].astype(np.int32),
               loss_weights=np.ones((1, len(pos)), np.float32), task=np.zeros(1, np.int32))
  batch = jax.tree.map(jnp.asarray, batch)
  model = Qwen25VL(cfg, rngs=nnx.Rngs(0))
  params = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
  first, times, step = time_train_step(model, batch, args.steps,
                                       profile_dir=args.profile_dir and os.path.join(args.profile_dir, impl))
  stats = jax.devices()[0].memory_stats() or {}
  return dict(first=first, times=times, tokens=int(inputs.input_ids.size), compiles=step._cache_size(),
              peak_mb=stats.get("peak_bytes_in_use", 0) / 2**20, device=jax.devices()[0].device_kind,
              params=int(params))


def check_cudnn(args):
  """Hidden states of a small bf16 model with cuDNN and with XLA attention, on a real example."""
  import jax
  import jax.numpy as jnp
  from flax import nnx

  from rewatch_jax.models import Qwen25VL, from_hf_inputs
  cfg = small_config().replace(param_dtype="bfloat16", dtype="bfloat16")
  raw = make_inputs(cfg, 8, 224, batch=2, text=254)  # 512 tokens
  raw["attention_mask"][1, -50:] = 0  # right padding on the second row
  inputs = jax.tree.map(jnp.asarray, from_hf_inputs(cfg, **raw))
  state = nnx.state(Qwen25VL(cfg, rngs=nnx.Rngs(1)))
  out = {}
  for impl in ("xla", "cudnn"):  # same weights, the attention choice lives in the graph
    graphdef = nnx.graphdef(nnx.eval_shape(lambda impl=impl: Qwen25VL(cfg.replace(attention=impl), rngs=nnx.Rngs(1))))
    hidden = jax.jit(lambda s, x, g=graphdef: nnx.merge(g, s)(x, return_hidden=True))(state, inputs)
    out[impl] = np.asarray(hidden, np.float32)
  real = raw["attention_mask"].astype(bool)
  diff = np.abs(out["xla"] - out["cudnn"])[real].max()
  scale = np.abs(out["xla"])[real].max()
  print(f"cuDNN vs XLA attention, small bf16 model, real tokens: max |diff| {diff:.3g} (max |h| {scale:.3g})",
        file=sys.stderr)
  if not diff <= 0.05 * scale:
    raise SystemExit(f"cuDNN attention disagrees with XLA: {diff} vs scale {scale}")


def run_torch(args) -> dict:
  import torch
  import transformers

  from rewatch_jax.models import ModelConfig
  device = "cuda" if torch.cuda.is_available() else "cpu"
  cfg: ModelConfig = model_config(args, "xla")
  hf_cfg = transformers.Qwen2_5_VLConfig(**cfg.to_hf_dict())
  weights = getattr(torch, args.param_dtype)
  with torch.device(device):
    model = transformers.Qwen2_5_VLForConditionalGeneration._from_config(
        hf_cfg, dtype=weights, attn_implementation="sdpa").train()
  raw, pos = example(cfg, args)
  batch = {k: torch.from_numpy(v).to(device) for k, v in raw.items()}
  batch["pixel_values_videos"] = batch["pixel_values_videos"].to(weights)
  labels = torch.full_like(batch["input_ids"], -100)
  labels[:, pos + 1] = batch["input_ids"][:, pos + 1]
  types = torch.zeros_like(batch["input_ids"])
  types[batch["input_ids"] == cfg.video_token_id] = 2
  opt = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.0, fused=device == "cuda")

  def step():
    opt.zero_grad(set_to_none=True)
    with torch.autocast(device, dtype=torch.bfloat16, enabled=weights != torch.bfloat16):
      loss = model(**batch, mm_token_type_ids=types, labels=labels).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    if device == "cuda":
      torch.cuda.synchronize()

  first, times = time_steps(step, args.steps)
  peak = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else 0.0
  return dict(first=first, times=times, tokens=int(batch["input_ids"].numel()), peak_mb=peak,
              device=torch.cuda.get_device_name() if device == "cuda" else "cpu")


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--steps", type=int, default=5)
  p.add_argument("--frames", type=int, default=32)
  p.add_argument("--size", type=int, default=448)
  p.add_argument("--length", type=int, default=8192)
  p.add_argument("--trained", type=int, default=2048)
  p.add_argument("--remat", default="none")
  p.add_argument("--param_dtype", default="float32", choices=["float32", "bfloat16"],
                 help="weights and AdamW moments (compute is bf16 either way)")
  p.add_argument("--pad_mlp_to", type=int, default=128, help="ModelConfig.pad_mlp_to of ours (1: off)")
  p.add_argument("--impls", default="jax,torch")
  p.add_argument("--small", action="store_true")
  p.add_argument("--no_check", action="store_true", help="skip the cuDNN-vs-XLA agreement check")
  p.add_argument("--budget_s", type=float, default=1e9, help="start no further impl after this many seconds")
  p.add_argument("--profile_dir", default="", help="trace two more steps of ours there (jax.profiler) "
                 "and print the device ops that took longest")
  p.add_argument("--dump_hlo", default="", help="XLA dumps the train step's optimised HLO there (ours)")
  p.add_argument("--impl", help=argparse.SUPPRESS)
  args = p.parse_args()
  if args.impl:
    row = run_torch(args) if args.impl == "torch" else run_jax(args, args.impl)
    print(json.dumps(row))
    return

  from rewatch_jax.models import from_hf_inputs
  from rewatch_jax.train.metrics import peak_flops, train_flops
  cfg = model_config(args, "xla")
  inputs = from_hf_inputs(cfg, **example(cfg, args)[0])
  flops = train_flops(cfg, args.length, inputs.pixel_values.shape[1], args.trained, inputs.frame_block)
  names = {"jax": "rewatch-jax (cuDNN attn)", "jax_xla": "rewatch-jax (XLA attn)", "torch": "HF + torch AdamW",
           "jax_unpadded": "rewatch-jax (MLP unpadded)"}
  flags = [f"--{k}={getattr(args, k)}" for k in ("steps", "frames", "size", "length", "trained", "remat", "pad_mlp_to")]
  flags += ["--no_check"] * args.no_check + [f"--profile_dir={args.profile_dir}"] * bool(args.profile_dir)
  rows = {}
  print(f"{'impl':<26}{'tokens/s':>10}{'step s':>9}{'first s':>9}{'peak GB':>9}{'MFU':>7}", flush=True)
  start = time.time()
  for impl in args.impls.split(","):
    t0 = time.time()
    if t0 - start > args.budget_s:
      print(f"{names[impl]:<26} skipped (--budget_s)", flush=True)
      continue
    env = dict(os.environ, XLA_PYTHON_CLIENT_MEM_FRACTION="0.92")
    if args.dump_hlo and impl != "torch":
      env["XLA_FLAGS"] = (f"{env.get('XLA_FLAGS', '')} --xla_dump_to={os.path.join(args.dump_hlo, impl)}"
                          " --xla_dump_hlo_module_re=^jit_step$ --xla_dump_hlo_as_text").strip()
    out = subprocess.run([sys.executable, __file__, f"--impl={impl}", *flags, *(["--small"] if args.small else [])],
                         capture_output=True, text=True, env=env)
    if os.environ.get("BENCH_LOG_DIR"):  # the children's full stderr, for the curious
      with open(os.path.join(os.environ["BENCH_LOG_DIR"], f"{impl}_{args.remat}.stderr"), "w") as f:
        f.write(out.stderr)
    if out.returncode:
      print(f"{names[impl]:<26} failed after {time.time() - t0:.0f} s:\n{out.stderr[-3000:]}", flush=True)
      continue
    r = rows[impl] = json.loads(out.stdout.strip().splitlines()[-1])
    retraced = r.get("compiles", 1) > 1  # then show JAX's explanation of the cache misses
    shown = [line for line in out.stderr.splitlines() if "cuDNN vs XLA" in line or retraced and "MISS" in line]
    sys.stderr.write("".join(line + "\n" for line in shown))
    step = sorted(r["times"])[len(r["times"]) // 2]
    r["tps"] = r["tokens"] / step
    peak = peak_flops(r["device"])
    r["mfu"] = flops / step / peak if peak else float("nan")
    print(f"{names[impl]:<26}{r['tps']:>10.0f}{step:>9.3f}{r['first']:>9.1f}{r['peak_mb'] / 1024:>9.1f}"
          f"{r['mfu']:>7.1%}", flush=True)
    print(f"  step times {[round(t, 3) for t in r['times']]}; train-step compilations: {r.get('compiles', '-')}")
    if args.profile_dir and impl != "torch":
      trace_dir = os.path.join(args.profile_dir, impl)
      print("\n".join(["  where a traced step's time went:"] + ["    " + line for line in top_trace_ops(trace_dir)]))
      save_device_trace(trace_dir, os.path.join(args.profile_dir, f"{impl}_device_trace.json.gz"))
  if "jax" in rows and "torch" in rows:
    print(f"speed-up (tokens/s ours / HF): {rows['jax']['tps'] / rows['torch']['tps']:.2f}x")
  if rows:
    r = next(iter(rows.values()))
    params = next((x["params"] for x in rows.values() if "params" in x), 0)
    print(f"device: {r['device']}; model {params / 1e9:.2f}B params; "
          f"{flops / 1e12:.1f} model TFLOP per step")


if __name__ == "__main__":
  main()
