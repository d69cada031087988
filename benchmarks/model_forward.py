r"""Forward+backward throughput: our jitted Qwen2.5-VL against Hugging Face's torch model.

  python benchmarks/model_forward.py [--steps 3] [--frames 16] [--size 224] [--forward 1]

Both run the same weights (ours exported with rewatch_jax.hf.save_pretrained and loaded by
transformers) on the same inputs: a batch of 2, each a 16-frame video plus text, next-token loss,
full backward. Each implementation runs in its own subprocess so peak memory is its own.
Prints a table with tokens/s, step time, compile/first-step time, peak RSS and the ratio.

`--forward 1`: the forward row instead, what rollouts and evaluation pay per prompt: the vision
tower and the prefill (every layer's keys and values kept, logits of the last position only), no
gradients. Ours: `Qwen25VL.prefill` as the sampler calls it; HF: the model in eval mode under
`torch.inference_mode()` with `use_cache=True, logits_to_keep=1`, as `generate`'s prefill.
"""

from __future__ import annotations

import os
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

from common import comparison_args, print_comparison, run_children, time_steps  # noqa: E402


def bench_config():
  from rewatch_jax.models import ModelConfig, TextConfig, VisionConfig
  return ModelConfig(
      text=TextConfig(vocab_size=32000, hidden_size=512, intermediate_size=1536, num_hidden_layers=8,
                      num_attention_heads=8, num_key_value_heads=2, mrope_section=(8, 12, 12)),
      vision=VisionConfig(depth=8, hidden_size=384, intermediate_size=1024, num_heads=6,
                          out_hidden_size=512, fullatt_block_indexes=(3, 7)),
      image_token_id=31000, video_token_id=31001, vision_start_token_id=31002,
      vision_end_token_id=31003, bos_token_id=31004, eos_token_id=31005).validate()


def make_inputs(cfg, frames: int, size: int, batch: int = 2, text: int = 128):
  import numpy as np

  from rewatch_jax.data.processor import frames_to_patches
  rng = np.random.default_rng(0)
  ids, rows, grids = [], [], []
  for _ in range(batch):
    video = rng.integers(0, 256, (frames, size, size, 3), dtype=np.uint8)
    patches, grid = frames_to_patches(video, cfg.vision)
    n = int(np.prod(grid)) // cfg.vision.merge_unit
    words = rng.integers(0, 30000, text)
    ids.append(np.concatenate([words[:16], [cfg.vision_start_token_id], [cfg.video_token_id] * n,
                               [cfg.vision_end_token_id], words[16:]]))
    rows.append(patches)
    grids.append(grid)
  return dict(input_ids=np.stack(ids), attention_mask=np.ones((batch, len(ids[0])), np.int64),
              pixel_values_videos=np.concatenate(rows), video_grid_thw=np.array(grids),
              second_per_grid_ts=np.ones(batch, np.float32))


def run_jax(hf_dir, args):
  import jax
  import jax.numpy as jnp
  import optax
  from flax import nnx

  from rewatch_jax import hf
  from rewatch_jax.models import from_hf_inputs
  model = hf.load_pretrained(hf_dir)
  batch = make_inputs(model.config, args.frames, args.size)
  inputs = jax.tree.map(jnp.asarray, from_hf_inputs(model.config, **batch))
  graphdef, params = nnx.split(model)

  if args.forward:
    @jax.jit
    def prefill(params, inputs):
      hidden, cache = nnx.merge(graphdef, params).prefill(inputs, 1, 1)
      return nnx.merge(graphdef, params).text.logits(hidden[:, -1]), cache

    first, times = time_steps(lambda: jax.block_until_ready(prefill(params, inputs)), args.steps)
    return first, times, int(batch["input_ids"].size)

  @jax.jit
  def grad_step(params, inputs):
    def loss(params):
      logits = nnx.merge(graphdef, params)(inputs)[:, :-1]
      return optax.softmax_cross_entropy_with_integer_labels(logits, inputs.input_ids[:, 1:]).mean()
    return jax.value_and_grad(loss)(params)

  first, times = time_steps(lambda: jax.block_until_ready(grad_step(params, inputs)), args.steps)
  return first, times, int(batch["input_ids"].size)


def run_torch(hf_dir, args):
  import torch
  import transformers
  torch.set_num_threads(os.cpu_count())
  model = transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(hf_dir, dtype=torch.float32)
  model.train()
  cfg = bench_config()
  batch = {k: torch.from_numpy(v) for k, v in make_inputs(cfg, args.frames, args.size).items()}
  types = torch.zeros_like(batch["input_ids"])
  types[batch["input_ids"] == cfg.video_token_id] = 2
  batch["mm_token_type_ids"] = types

  if args.forward:
    model.eval()

    def forward():
      with torch.inference_mode():
        model(**batch, use_cache=True, logits_to_keep=1)

    first, times = time_steps(forward, args.steps)
    return first, times, int(batch["input_ids"].numel())

  def step():
    model.zero_grad(set_to_none=True)
    model(**batch, labels=batch["input_ids"]).loss.backward()

  first, times = time_steps(step, args.steps)
  return first, times, int(batch["input_ids"].numel())


def main():
  args = comparison_args(__doc__, run_jax, run_torch, forward=0)
  if args is None:
    return

  import jax
  from flax import nnx

  from rewatch_jax import hf
  from rewatch_jax.models import Qwen25VL
  cfg = bench_config()
  model = Qwen25VL(cfg, rngs=nnx.Rngs(0))
  n_params = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
  with tempfile.TemporaryDirectory() as tmp:
    hf.save_pretrained(model, tmp)
    rows = run_children(__file__, tmp, ["--steps", str(args.steps), "--frames", str(args.frames),
                                        "--size", str(args.size),
                                        "--forward", str(args.forward)])
  print(f"model: {n_params / 1e6:.1f}M params; batch 2 x ({args.frames} frames at {args.size}px + 128 text)"
        f" = {rows['jax']['tokens']} tokens; {'forward (vision + prefill)' if args.forward else 'forward+backward'},"
        f" fp32, CPU ({os.cpu_count()} cores)")
  print_comparison(rows, {"jax": "rewatch-jax (XLA)", "torch": "HF transformers"})


if __name__ == "__main__":
  main()
