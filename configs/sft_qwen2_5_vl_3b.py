"""ReWatch-R1 SFT of Qwen2.5-VL-3B-Instruct (caption + direct QA + CoT, multi-task).

  python launch/train.py --config configs/sft_qwen2_5_vl_3b.py --workdir gs://BUCKET/run \
      --config.init_from_hf=gs://BUCKET/Qwen2.5-VL-3B-Instruct --config.data.dir=/gcs/BUCKET/prepared
  python launch/train.py --config configs/sft_qwen2_5_vl_3b.py:tiny ...   # same recipe, tiny model

Paper settings (REWATCH_METHOD.md sec. 5): 16k context, video at 2 fps, <= 192 frames of
128*28*28 pixels, AdamW, lr 1e-6 (reported inconsistently), grad clip 1.0, global batch 64,
10 epochs. The recipe itself is rewatch_jax/train/config.py:sft_recipe.
"""

from rewatch_jax.train.config import lr_sweep, sft_recipe


def get_config(arg: str | None = None):
  return sft_recipe("3b", arg)


def sweep():
  return lr_sweep()
