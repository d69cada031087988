"""ReWatch-R1 SFT of Qwen2.5-VL-3B-Instruct (caption + direct QA + CoT, multi-task).

  python launch/train.py --config configs/sft_qwen2_5_vl_3b.py --workdir gs://BUCKET/run \
      --config.init_from_hf=gs://BUCKET/Qwen2.5-VL-3B-Instruct --config.data.dir=gs://BUCKET/prepared
  python launch/train.py --config configs/sft_qwen2_5_vl_3b.py:tiny ...   # same recipe, tiny model

Paper settings (REWATCH_METHOD.md sec. 5): 16k context, video at 2 fps, <= 192 frames of
128*28*28 pixels, AdamW, lr 1e-6 (reported inconsistently), grad clip 1.0, global batch 64,
10 epochs.
"""

from configs.common import sft_config


def get_config(arg: str | None = None):
  c = sft_config("3b")
  c.epochs = 10.0
  c.mesh.fsdp = -1  # FSDP over all chips; add tensor parallelism with --config.mesh.tensor=N
  c.mesh.data = 1
  c.model.param_dtype = "bfloat16"
  c.model.dtype = "bfloat16"
  c.model.remat = "full"
  if arg == "tiny":
    tiny = sft_config("tiny")
    c.model = tiny.model
    c.data.batch_size = 8
    c.data.workers = 0
    c.data.buckets = [dict(length=1024, patches=1024, frame_block=64, loss_tokens=256)]
    c.eval.bucket = dict(length=1024, patches=1024, frame_block=64, loss_tokens=1)
    c.total_steps, c.epochs, c.checkpoint_every_steps = 20, 0.0, 10
    c.mesh.fsdp, c.mesh.data = 1, -1
  elif arg:
    raise ValueError(f"unknown variant {arg!r} (use :tiny or nothing)")
  return c


def sweep():
  """big_vision-style grid: launch/sweep.py expands it into --config.x=y overrides."""
  return [{"config.optimizer.learning_rate": lr, "config.seed": s} for lr in (5e-7, 1e-6, 2e-6) for s in (0,)]
