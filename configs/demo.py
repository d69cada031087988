"""The embedded demo: the ReWatch recipe on the procedural toy world, on a CPU, in minutes.

  python launch/train.py --config configs/demo.py --workdir /tmp/rewatch_demo
  python launch/train.py --config configs/demo.py:sft ...   # the SFT stage alone (no evaluation)

Generates toy-world videos with exact captions/QA/CoT (if missing), prepares them with a small
VideoSpec and the toy tokenizer, evaluates the random model on the held-out split, pretrains it on
the perception questions alone (the stand-in for the video pretraining that a real Qwen2.5-VL has
had before ReWatch's SFT), runs the multi-task SFT with those questions kept in the mix, evaluates
again (also with each question shown another video's frames, to show what the model takes from the
video), then runs GRPO twice from the SFT weights on the perception questions in thinking mode (the
paper's acc+fmt reward, and O&R, judged against the toy world itself), scores each on a held-out
world's perception questions (accuracy, observations per response, the share the judge finds
unsupported) and prints the table.
"""

import ml_collections

from rewatch_jax.demo import toyworld
from rewatch_jax.train.config import base


def get_config(arg: str | None = None):
  c = base("tiny")
  c.hooks = "rewatch_jax.demo.hooks:Demo"  # prepares the toy world; the guessers and perception in the table
  # How many toy-world videos (0: none; the run reads data.dir), the seed of the first, the share
  # held out, and the ranges each world's duration (s) and shape count are drawn from. Enough videos
  # that the model cannot memorise them (with 60 it did, and did worse on new ones); short worlds
  # with few shapes keep preparation and sequences small.
  c.demo = ml_collections.ConfigDict(dict(videos=300, seed=0, test_fraction=0.1, duration=(8, 16), shapes=(1, 3),
                                          rl_test_videos=150))  # a world of its own for RL's held-out test
  c.tokenizer = ""  # the toy tokenizer, set by the hooks
  # A small model of the same architecture; special ids are the toy tokenizer's (0..6).
  ids = {t: i for i, t in enumerate(toyworld.SPECIAL_TOKENS)}
  m = c.model
  m.text.vocab_size, m.text.hidden_size, m.text.intermediate_size = 1024, 128, 384
  m.text.num_hidden_layers, m.text.num_attention_heads, m.text.num_key_value_heads = 4, 4, 2
  m.text.mrope_section = (4, 6, 6)
  m.vision.depth, m.vision.hidden_size, m.vision.intermediate_size, m.vision.num_heads = 2, 64, 128, 2
  m.vision.out_hidden_size, m.vision.fullatt_block_indexes = 128, (1,)
  m.image_token_id, m.video_token_id = ids["<|image_pad|>"], ids["<|video_pad|>"]
  m.vision_start_token_id, m.vision_end_token_id = ids["<|vision_start|>"], ids["<|vision_end|>"]
  m.bos_token_id, m.eos_token_id = ids["<|endoftext|>"], ids["<|im_end|>"]
  # 0.5 fps, 4-8 frames of 84x112: 12 visual tokens per frame pair. The toy world's backdrop
  # changes fall between the frame pairs of this sampling (the hooks pass it the spec).
  c.video_spec.update(dict(fps=0.5, min_frames=4, max_frames=16, min_pixels=84 * 112, max_pixels=84 * 112,
                           total_pixels=16 * 84 * 112))
  c.total_steps, c.checkpoint_every_steps, c.log_every_steps = 700, 100, 20
  c.data.batch_size, c.data.workers, c.data.pad_id = 8, 0, ids["<|endoftext|>"]
  # The perception questions stay in the mix as their own task: without them the recipe's other
  # tasks wear the pretrained read down (docs/notes/demo_experiments.md, eighth pass).
  # Mixed by weight alone (not by size): the toy world has one caption and ~27 QA per video. QA at
  # 2: at 1 the model had not learnt what kind of answer each question takes, and its open answers
  # to the other questions fell below the text-only guess (docs/notes/demo_experiments.md, ninth pass).
  # perception_cot: the perception questions answered in thinking mode, which RL then trains. At 0.5
  # the SFT model's sampled answers broke the format 94% of the time (RL had little to work with);
  # at 1 they keep it 64% of the time, pass@8 0.75 (docs/notes/rl_demo.md).
  c.data.weights = ml_collections.ConfigDict(dict(caption=0.5, qa=2.0, cot=0.5, perception=1.0, perception_cot=1.0))
  c.data.mix_by_size = False
  # 150 warm-up steps: with the SFT's 40 the read formed only weakly in one seed of five, with 150
  # in all five (docs/notes/demo_experiments.md, ninth pass).
  c.pretrain.steps, c.pretrain.warmup_steps = 700, 150
  c.pretrain.weights = ml_collections.ConfigDict(dict(caption=0.0, qa=0.0, cot=0.0, perception=1.0))
  # One task per batch (data.batch_by_task), so each task's batches take its own bucket: direct
  # QA <= 183 tokens (<= 13 trained), captions <= 293 (<= 179), CoT <= 386 (<= 140); <= 4 frame
  # pairs of 48 patches.
  c.data.buckets = [dict(length=192, patches=256, frame_block=64, loss_tokens=16),
                    dict(length=320, patches=256, frame_block=64, loss_tokens=192),
                    dict(length=448, patches=256, frame_block=64, loss_tokens=192)]
  # 1e-3: at 3e-3 this model does not learn to read a chosen moment (docs/notes/demo_experiments.md, sixth pass).
  c.optimizer.update(dict(learning_rate=1e-3, warmup_steps=40, weight_decay=0.01))
  # Evaluation prompts are direct-answer QA (<= 167 tokens). The longest answers ("it passes behind
  # the green circle") take 13 new tokens with the toy tokenizer; 10 cut every causal answer off.
  c.eval.update(dict(enabled=True, before=True, ablation="swap", batch_size=32, max_new_tokens=16,
                     buckets=[dict(length=192, patches=256, frame_block=64, loss_tokens=1)]))
  # RL prompts (thinking mode, <= ~260 tokens with the toy tokenizer), when an RL stage is set, and
  # the O&R judges that check observations against the toy world itself (demo/judges.py)
  c.rl.buckets = [dict(length=320, patches=256, frame_block=64, loss_tokens=1)]
  c.rl.reward.judge = "rewatch_jax.demo.judges:ToyJudge"
  # RL: two arms from the SFT weights (acc+fmt, the paper's baseline, and O&R) on the perception
  # questions in thinking mode, each scored on the held-out world's before and after.
  # 30 steps of 8 prompts x 8 samples; no reference model (beta 0: a CPU budget).
  c.rl.update(dict(steps=30, prompts_per_step=8, samples=8, max_new_tokens=96, learning_rate=2e-4, beta=0.0,
                   arms=("acc_fmt", "o_and_r"), eval_set="rl_eval"))
  if arg == "sft":
    c.eval.enabled, c.pretrain.steps, c.demo.rl_test_videos = False, 0, 0
    c.rl.update(dict(steps=0, arms=(), eval_set=""))  # (--config.rl.steps=N: one RL stage after the SFT)
  elif arg:
    raise ValueError(f"unknown variant {arg!r} (use :sft or nothing)")
  return c
