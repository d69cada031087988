r"""SFT train step (forward, backward, clip, AdamW): ours against Hugging Face's torch model with
torch AdamW, same weights and inputs; plus the number of XLA compilations over 50 steps of mixed
video lengths in one bucket (must be 1).

  python benchmarks/train_step.py [--steps 3] [--compile_steps 50]

Inputs: batch 2 x (16-frame 224x224 video + 128 text tokens), the last 64 text tokens trained
(SFT masks: HF gets labels=-100 elsewhere, we compute logits only at trained positions).
"""

from __future__ import annotations

import os
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

from common import comparison_args, print_comparison, run_children, time_steps  # noqa: E402
from model_forward import bench_config, make_inputs  # noqa: E402

TRAINED = 64


def loss_arrays(ids: np.ndarray):
  b, length = ids.shape
  pos = np.arange(length - 1 - TRAINED, length - 1)
  return (np.tile(pos, (b, 1)).astype(np.int32), ids[:, pos + 1].astype(np.int32),
          np.ones((b, TRAINED), np.float32))


def run_jax(hf_dir, args):
  import jax
  import jax.numpy as jnp

  from rewatch_jax import hf
  from rewatch_jax.models import from_hf_inputs
  model = hf.load_pretrained(hf_dir)
  raw = make_inputs(model.config, args.frames, args.size)
  index, targets, weights = loss_arrays(raw["input_ids"])
  batch = dict(inputs=from_hf_inputs(model.config, **raw), loss_index=index, loss_targets=targets,
               loss_weights=weights, task=np.zeros(len(index), np.int32))
  batch = jax.tree.map(jnp.asarray, batch)
  first, times, _ = time_train_step(model, batch, args.steps)
  return first, times, int(raw["input_ids"].size)


def time_train_step(model, batch, steps: int, profile_dir: str = ""):
  """The trainer's jitted SFT step (its optimizer, constant rate, one device) on `batch`: seconds
  of the first call, of each of `steps` more, and the jitted step (for its compile count). With
  `profile_dir`, two more steps are traced there with jax.profiler (perfetto json included)."""
  import jax

  from rewatch_jax.mesh import make_mesh
  from rewatch_jax.train import sft
  from rewatch_jax.train import state as train_state
  trainable = train_state.setup(model, _optimizer(1e-5), 100, make_mesh({"data": 1}, jax.devices()[:1]), 0)
  step = sft.jit_train_step(trainable, 1, 1)
  box = {"state": trainable.state}

  def one():
    box["state"], m = step(box["state"], batch)
    jax.block_until_ready(m)

  first, times = time_steps(one, steps)
  if profile_dir:
    with jax.profiler.trace(profile_dir, create_perfetto_trace=True):
      one()
      one()
  return first, times, step


def run_torch(hf_dir, args):
  import torch
  import transformers
  torch.set_num_threads(os.cpu_count())
  model = transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(hf_dir, dtype=torch.float32).train()
  cfg = bench_config()
  raw = make_inputs(cfg, args.frames, args.size)
  batch = {k: torch.from_numpy(v) for k, v in raw.items()}
  labels = torch.full_like(batch["input_ids"], -100)
  labels[:, -TRAINED:] = batch["input_ids"][:, -TRAINED:]
  types = torch.zeros_like(batch["input_ids"])
  types[batch["input_ids"] == cfg.video_token_id] = 2
  opt = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.0)

  def step():
    opt.zero_grad(set_to_none=True)
    model(**batch, mm_token_type_ids=types, labels=labels).loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()

  first, times = time_steps(step, args.steps)
  return first, times, int(batch["input_ids"].numel())


def _optimizer(learning_rate: float):
  """The trainer's optimizer config (rewatch_jax/train/config.py), constant rate, no warmup or decay."""
  from rewatch_jax.train.config import base
  oc = base("tiny").optimizer
  oc.update(dict(learning_rate=learning_rate, warmup_steps=0, schedule="constant", weight_decay=0.0))
  return oc


def compile_count(steps: int) -> int:
  """Train-step compilations over `steps` batches of different video grids in one bucket."""
  import jax
  import jax.numpy as jnp
  from flax import nnx

  from rewatch_jax.mesh import make_mesh
  from rewatch_jax.models import Qwen25VL, from_hf_inputs, get_preset
  from rewatch_jax.train import sft
  from rewatch_jax.train import state as train_state
  cfg = get_preset("tiny")
  rng = np.random.default_rng(0)
  trainable = train_state.setup(Qwen25VL(cfg, rngs=nnx.Rngs(0)), _optimizer(1e-4), steps,
                                make_mesh({"data": 1}, jax.devices()[:1]), 0)
  step, state = sft.jit_train_step(trainable, 1, 1), trainable.state
  for _ in range(steps):
    t, h, w = int(rng.integers(1, 5)), 2 * int(rng.integers(1, 5)), 2 * int(rng.integers(1, 5))
    n = t * h * w // 4
    ids = np.concatenate([rng.integers(0, 400, 5), [cfg.vision_start_token_id], [cfg.video_token_id] * n,
                          [cfg.vision_end_token_id], rng.integers(0, 400, 10)])[None]
    ids = np.pad(ids, ((0, 0), (0, 128 - ids.shape[1])))
    mask = (np.arange(128) < 17 + n)[None].astype(np.int64)
    inputs = from_hf_inputs(cfg, input_ids=ids, attention_mask=mask,
                            pixel_values_videos=rng.standard_normal((t * h * w, cfg.vision.patch_dim), np.float32),
                            video_grid_thw=np.array([[t, h, w]]), second_per_grid_ts=np.array([1.0]),
                            pad_patches_to=256, frame_block=64)
    index = np.arange(6 + n, 15 + n, dtype=np.int32)[None]
    batch = dict(inputs=inputs, loss_index=index, loss_targets=ids[:, index[0] + 1].astype(np.int32),
                 loss_weights=np.ones_like(index, np.float32), task=np.zeros(1, np.int32))
    state, _ = step(state, jax.tree.map(jnp.asarray, batch))
  return step._cache_size()


def main():
  args = comparison_args(__doc__, run_jax, run_torch, compile_steps=50)
  if args is None:
    return
  import jax
  from flax import nnx

  from rewatch_jax import hf
  from rewatch_jax.models import Qwen25VL
  model = Qwen25VL(bench_config(), rngs=nnx.Rngs(0))
  n_params = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
  with tempfile.TemporaryDirectory() as tmp:
    hf.save_pretrained(model, tmp)
    rows = run_children(__file__, tmp, ["--steps", str(args.steps), "--frames", str(args.frames),
                                        "--size", str(args.size)])
  print(f"SFT train step (fwd + bwd + clip + AdamW), {n_params / 1e6:.1f}M params, "
        f"{rows['jax']['tokens']} tokens/step ({TRAINED} trained per example), fp32, CPU ({os.cpu_count()} cores)")
  print_comparison(rows, {"jax": "rewatch-jax", "torch": "HF + torch AdamW"})
  print(f"XLA compilations of the train step over {args.compile_steps} steps of mixed video grids "
        f"(1 bucket): {compile_count(args.compile_steps)}")


if __name__ == "__main__":
  main()
