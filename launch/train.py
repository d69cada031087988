r"""Training entry point.

  python launch/train.py --config configs/demo.py --workdir /tmp/rewatch_demo
  python launch/train.py --config configs/demo.py --config.demo.batch_size=4 --workdir ...

The SFT and GRPO trainers are being built (see the issues); today this runs the demo stage that
exists: model construction, host-side video processing and the jitted forward pass with its loss.
"""

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file (path.py[:variant]).", lock_config=True)
flags.DEFINE_string("workdir", None, "Where outputs go (local path or gs://).")
flags.mark_flags_as_required(["config"])


def synthetic_video(num_frames: int, size: int, seed: int):
  """A bright square moving across a dark gradient: enough structure for a forward pass."""
  import numpy as np
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[:size, :size]
  base = np.stack([xx, yy, (xx + yy) // 2], -1).astype(np.float32) * 100 / size
  frames = np.repeat(base[None], num_frames, 0)
  side = size // 4
  for t in range(num_frames):
    x = int((size - side) * t / max(1, num_frames - 1))
    y = int(rng.integers(0, size - side))
    frames[t, y:y + side, x:x + side] = (230, 60, 40)
  return frames.astype(np.uint8)


def demo_forward(config, workdir):
  import jax
  import jax.numpy as jnp
  import numpy as np
  from flax import nnx
  from rewatch_jax.data.processor import frames_to_patches
  from rewatch_jax.models import ModelConfig, Qwen25VL, from_hf_inputs

  cfg = ModelConfig.from_dict(config.model.to_dict())
  d = config.demo
  model = Qwen25VL(cfg, rngs=nnx.Rngs(config.seed))
  n_params = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
  rng = np.random.default_rng(config.seed)
  ids, rows, grids = [], [], []
  for b in range(d.batch_size):
    patches, grid = frames_to_patches(synthetic_video(d.num_frames, d.frame_size, config.seed + b), cfg.vision)
    n_video = int(np.prod(grid)) // cfg.vision.merge_unit
    text = rng.integers(0, min(cfg.image_token_id, cfg.text.vocab_size), d.text_tokens)
    ids.append(np.concatenate([text[:8], [cfg.vision_start_token_id], [cfg.video_token_id] * n_video,
                               [cfg.vision_end_token_id], text[8:]]))
    rows.append(patches)
    grids.append(grid)
  inputs = from_hf_inputs(cfg, input_ids=np.stack(ids), pixel_values_videos=np.concatenate(rows),
                          video_grid_thw=np.array(grids),
                          second_per_grid_ts=np.full(len(grids), cfg.vision.temporal_patch_size / 2.0))
  inputs = jax.tree.map(jnp.asarray, inputs)
  is_text = (inputs.vision_token_index[:, 1:] < 0) & (inputs.input_ids[:, 1:] != cfg.vision_end_token_id)

  @nnx.jit
  def loss_fn(model, inputs):
    logits = model(inputs)[:, :-1]
    logp = jax.nn.log_softmax(logits, axis=-1)
    nll = -jnp.take_along_axis(logp, inputs.input_ids[:, 1:, None], axis=-1)[..., 0]
    return jnp.sum(nll * is_text) / jnp.sum(is_text)

  t0 = time.perf_counter()
  loss = float(loss_fn(model, inputs))
  compile_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  for _ in range(d.steps):
    loss = loss_fn(model, inputs)
  loss = float(loss)
  step_s = (time.perf_counter() - t0) / d.steps
  tokens = int(inputs.input_ids.size)
  result = dict(params=int(n_params), batch=d.batch_size, tokens_per_example=tokens // d.batch_size,
                video_patches=int(inputs.pixel_values.shape[1]), loss=loss,
                uniform_loss=float(np.log(cfg.text.vocab_size)), compile_s=compile_s,
                step_ms=step_s * 1e3, tokens_per_sec=tokens / step_s)
  print("demo forward pass (tiny Qwen2.5-VL, random init, synthetic video)")
  for k, v in result.items():
    print(f"  {k:<20} {v:.4g}" if isinstance(v, float) else f"  {k:<20} {v}")
  if workdir:
    from etils import epath
    out = epath.Path(workdir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(config.to_json_best_effort(indent=2))
    (out / "demo_forward.json").write_text(json.dumps(result, indent=2))
  return result


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  demo_forward(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
  app.run(main)
