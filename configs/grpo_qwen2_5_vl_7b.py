"""ReWatch-R1 RL (GRPO with the Observation & Reasoning reward) of Qwen2.5-VL-7B from its SFT checkpoint.

  python launch/train.py --config configs/grpo_qwen2_5_vl_7b.py --workdir gs://BUCKET/rl \\
      --config.init_from_checkpoint=gs://BUCKET/sft/checkpoints --config.data.dir=/gcs/BUCKET/prepared
  python launch/train.py --config configs/grpo_qwen2_5_vl_7b.py:tiny ...   # same recipe, tiny model
  --config.rl.reward.kind=acc_fmt      the paper's baseline (accuracy + format)
  --config.rl.reward.observation=False  O&R without r_obs (likewise reasoning)

Paper settings (REWATCH_METHOD.md sec. 6): group of 8, temperature 0.8, top_p 0.9, lr 1e-5, 14
prompts a step (16 here: whole prompts on each of 8 or 16 chips), 1 epoch of the RL prompt set
(launch/prepare.py --config rl). KL, clipping, response length and loss aggregation are not
published: the defaults are rewatch_jax/train/config.py's `rl` fields. The judges: by default the
offline caption judge; the paper's hosted judge is a rewards.judges.Judge given by
--config.rl.reward.judge=module:attribute.
"""

from rewatch_jax.train.config import rl_recipe


def get_config(arg: str | None = None):
  return rl_recipe("7b", arg)
