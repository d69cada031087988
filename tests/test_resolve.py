"""resolve(): every check names the config key and the fix, the derived values are filled in, the
data's tokenizer and VideoSpec must be the run's, and config.json is the config the trainer read."""

import json
import logging
import os
import shutil

import pytest

from configs import demo, sft_qwen2_5_vl_7b
from rewatch_jax import checkpoint
from rewatch_jax.data import chat, records, tfds_rewatch
from rewatch_jax.data.video import VideoSpec
from rewatch_jax.demo import toyworld
from rewatch_jax.models import ModelConfig
from rewatch_jax.train import driver, resolve
from rewatch_jax.train.resolve import ConfigError
from tests.conftest import resolved, small_sft_config

# (override, what the message must say: the key, the problem and the fix), checked before any data
# is read: a typo in a number fails in a second, not after the toy world is generated
STATIC = [
    ("checkpoint_every_steps", 0, "checkpoint_every_steps must be >= 1"),
    ("total_steps", 0, "nothing to train: set total_steps or epochs (SFT), or rl.steps"),
    ("total_steps", -1, "total_steps must be >= 0"),
    ("epochs", -1.0, "epochs must be >= 0"),
    ("pretrain.steps", -5, "pretrain.steps must be >= 0"),
    ("pretrain.warmup_steps", -1, "pretrain.warmup_steps must be >= 0"),
    ("profile.start", -1, "profile.start must be >= 0"),
    ("eval.max_new_tokens", 0, "eval.max_new_tokens must be >= 1"),
    ("optimizer.schedule", "linear", "optimizer.schedule must be one of ('cosine', 'constant')"),
    ("optimizer.learning_rate", 0.0, "optimizer.learning_rate must be > 0"),
    ("optimizer.grad_clip", 0.0, "optimizer.grad_clip must be > 0"),
    ("optimizer.final_lr_fraction", 2.0, "optimizer.final_lr_fraction must be in [0, 1]"),
    ("optimizer.vision_lr_scale", -1.0, "optimizer.vision_lr_scale must be >= 0 (0 or optimizer.freeze_vision: frozen)"),
    ("eval.ablation", "swp", "eval.ablation must be one of ('', 'swap', 'blank')"),
    ("data.pad_id", 5000, "data.pad_id 5000 is outside the vocabulary (model.text.vocab_size 1024): use the tokenizer"),
    ("mesh.fsdp", 3, "mesh: 8 devices do not divide into mesh"),
    ("micro_batches", 3, "data.batch_size 8 must divide by processes (1) and micro_batches (3)"),
    ("eval.batch_size", 12, "eval.batch_size 12 does not split over the mesh's batch axes (data x fsdp = 8 devices"),
    ("pretrain.batch_size", 12, "pretrain.batch_size 12 does not split over the mesh's batch axes"),
    ("video_spec.fps", 0.0, "video_spec: inconsistent VideoSpec"),
    ("data.buckets", [dict(length=192, patches=100, frame_block=64, loss_tokens=16)],
     "data.buckets[0]: patches 100 must be a multiple of frame_block 64"),
    ("eval.buckets", [dict(length=192, patches=256, frame_block=64, loss_tokens=200)],
     "eval.buckets[0]: loss_tokens 200 exceeds length 192"),
    ("eval.buckets", [dict(length=192, patches=256)], "eval.buckets[0]: Bucket.__init__() missing 1 required"),
    ("model.text.num_key_value_heads", 3, "model: Invalid Qwen2.5-VL config: num_attention_heads 4 not divisible"),
    ("init_from_checkpoint", "/nonexistent/ckpt", "init_from_checkpoint: /nonexistent/ckpt is not a rewatch-jax checkpoint"),
    ("hooks", "rewatch_jax.demo.hooks:Nope", "hooks: cannot load 'rewatch_jax.demo.hooks:Nope'"),
]


def sft_demo():
  """The demo's pretraining and SFT, evaluated: the stages these checks are about (its RL stages
  have checks of their own, tests/test_grpo.py)."""
  c = demo.get_config()
  c.rl.steps = 0
  return c


def _set(c, key, value):
  *path, last = key.split(".")
  for part in path:
    c = c[part]
  c[last] = value


@pytest.mark.parametrize("key, value, message", STATIC, ids=[f"{k}={v}" for k, v, _ in STATIC])
def test_each_check_names_the_key_and_the_fix(key, value, message, tmp_path):
  c = sft_demo()
  c.demo.videos = 0
  _set(c, key, value)
  with pytest.raises(ConfigError) as e:
    resolve.resolve(c, str(tmp_path))
  assert message in str(e.value)
  assert not os.listdir(tmp_path)  # nothing made or written


def test_both_initial_weights_and_a_mesh_too_small_for_the_batch(tmp_path):
  c = sft_demo()
  c.init_from_hf, c.init_from_checkpoint = "/a", "/b"
  with pytest.raises(ConfigError, match="init_from_hf and init_from_checkpoint are both set: give one"):
    resolve.resolve(c, str(tmp_path))
  c = sft_demo()
  c.data.batch_size = 4
  c.mesh.update(data=1, fsdp=8, tensor=1)
  with pytest.raises(ConfigError, match=r"data.batch_size 4 does not split .* use a multiple of 8, or shard"):
    resolve.resolve(c, str(tmp_path))


DATA = [  # (override, message) checked against the prepared data
    ("data.weights", dict(caption=0.0, qa=0.0, cot=0.0, perception=0.0),
     "data.weights: no task has a positive weight"),
    ("data.weights", dict(caption=-1.0, qa=1.0, cot=0.0, perception=0.0), "data.weights: weights must be >= 0"),
    ("pretrain.weights", dict(caption=0.0, qa=0.0, cot=0.0, perception=0.0),
     "pretrain.weights: no task has a positive weight ({'caption': 0.0"),
    ("data.dir", "", "data.dir is empty: point it at the prepared data"),
    ("eval.set", "qa_evaluation", "eval.set: no prepared 'qa_evaluation' data under"),
    ("video_spec.fps", 1.0, "video_spec: the prepared data under data.dir was decoded with"),
    ("tokenizer", "/nonexistent/tokenizer.json", "tokenizer: no file or folder /nonexistent/tokenizer.json"),
    ("eval.buckets", [dict(length=100, patches=256, frame_block=64, loss_tokens=1)],
     "eval.buckets: qa_eval: "),
]


@pytest.mark.parametrize("key, value, message", DATA, ids=[f"{k}" for k, _, _ in DATA])
def test_data_checks_name_the_key_and_the_fix(key, value, message, prepared, tmp_path):
  _, data_dir, tokenizer = prepared
  c = sft_demo()
  c.demo.videos, c.data.dir, c.tokenizer = 0, data_dir, tokenizer
  _set(c, key, value)
  with pytest.raises(ConfigError) as e:
    resolve.resolve(c, str(tmp_path))
  assert message in str(e.value)


def test_a_set_the_weights_name_that_was_not_prepared(prepared, tmp_path):
  _, data_dir, tokenizer = prepared
  c = small_sft_config()
  c.data.weights.caption = 0.0
  c.data.weights.captions = 1.0
  with pytest.raises(ConfigError, match=r"data.weights.captions: no prepared 'captions' data under .* \(run launch/prepare"):
    resolved(c, data_dir, tokenizer, str(tmp_path))


def test_derived_values_are_filled_and_recorded(prepared, tmp_path):
  _, data_dir, tokenizer = prepared
  c = sft_demo()
  c.pretrain.batch_size, c.eval.batch_size, c.epochs = 0, 0, 2.0
  run = resolved(c, data_dir, tokenizer, str(tmp_path))
  r = run.config
  sft_tasks = ("caption", "qa", "cot", "perception", "perception_cot")
  sizes = {t: len(tfds_rewatch.data_sources(data_dir, t)[0][0]) for t in sft_tasks}
  assert r.total_steps == int(2 * sum(sizes.values()) / 8)  # epochs over the SFT's tasks
  assert (r.pretrain.batch_size, r.pretrain.warmup_steps) == (8, 150)
  assert r.eval.batch_size == 8 and r.eval.dir == data_dir and r.tokenizer == tokenizer
  assert r.compilation_cache_dir == ""  # not on the CPU backend
  assert [(s.name, s.tasks, s.total_steps, s.batch_size, s.optimizer.warmup_steps) for s in run.stages] == [
      ("pretrain", ("perception",), 700, 8, 150), ("sft", sft_tasks, r.total_steps, 8, 40)]
  assert run.stages[0].workdir == f"{tmp_path}/pretrain" and run.stages[1].workdir == str(tmp_path)
  assert run.tokenizer_hash == chat.tokenizer_hash(chat.qwen_tokenizer(tokenizer))
  assert c.data.dir == data_dir and c.epochs == 2.0 and c.total_steps == 700  # the caller's config untouched
  with pytest.raises(AttributeError):
    r.new_field = 1  # locked
  assert resolve._tokenizer_path("") == chat.default_tokenizer_path()


def test_ordering_of_tasks_and_architecture_from_a_checkpoint(prepared, tmp_path):
  """ReWatch's tasks come first in their order, then other prepared sets by name; a run that starts
  from a checkpoint takes its architecture (config.json records it) and the config's numerics."""
  assert resolve._tasks(dict(zebra=1.0, cot=1.0, alpha=2.0, qa=0.0, caption=1.0), "data.weights") == (
      "caption", "cot", "alpha", "zebra")
  _, data_dir, tokenizer = prepared
  c = small_sft_config()
  cfg = ModelConfig.from_dict(c.model.to_dict())
  checkpoint.write_model_config(str(tmp_path / "ckpt"), cfg.replace(text=cfg.text.__class__(
      **{**cfg.text.__dict__, "num_hidden_layers": 2})))
  c.init_from_checkpoint = str(tmp_path / "ckpt")
  c.model.dtype = "bfloat16"
  run = resolved(c, data_dir, tokenizer, str(tmp_path / "run"))
  assert run.model.text.num_hidden_layers == run.config.model.text.num_hidden_layers == 2
  assert run.model.dtype == "bfloat16"


@pytest.fixture(scope="module")
def other_tokenizer(prepared, tmp_path_factory):
  """A second toy tokenizer (same special ids, a smaller vocabulary): another hash."""
  work, _, _ = prepared
  out = tmp_path_factory.mktemp("tok")
  for name in ("caption", "qa", "cot"):
    shutil.copy(os.path.join(work, "data", "toy", f"train_{name}.jsonl"), out)
  return toyworld.train_tokenizer(str(out), vocab_size=600)


def test_a_tokenizer_other_than_the_datas_stops_at_start_naming_both(prepared, other_tokenizer, tmp_path):
  _, data_dir, tokenizer = prepared
  ours = chat.tokenizer_hash(chat.qwen_tokenizer(tokenizer))
  theirs = chat.tokenizer_hash(chat.qwen_tokenizer(other_tokenizer))
  assert ours != theirs
  assert tfds_rewatch.identity(data_dir, ["qa"])["tokenizer_hash"] == ours  # prepare recorded it
  c = small_sft_config()
  with pytest.raises(ConfigError) as e:
    resolved(c, data_dir, other_tokenizer, str(tmp_path))
  message = str(e.value)
  assert message.startswith("tokenizer: ") and other_tokenizer in message and theirs in message and ours in message
  assert "set --config.tokenizer to that one, or prepare the data again" in message
  # a tokenizer whose special ids are not the model's
  with pytest.raises(ConfigError, match=r"tokenizer: .* disagree on special token ids"):
    resolved(small_sft_config(), data_dir, chat.default_tokenizer_path(), str(tmp_path))


def test_evaluation_data_of_another_tokenizer_stops_and_of_another_spec_warns(prepared, other_tokenizer, tmp_path,
                                                                              caplog):
  work, data_dir, tokenizer = prepared
  toy = os.path.join(work, "data", "toy")
  test = list(records.read_jsonl(os.path.join(toy, "test_qa.jsonl")))[:8]
  c = sft_demo()
  spec = VideoSpec(**c.video_spec)
  tfds_rewatch.prepare(str(tmp_path / "other_tok"), "qa_eval", test, toy, spec, tokenizer=other_tokenizer)
  c.eval.dir = str(tmp_path / "other_tok")
  with pytest.raises(ConfigError, match=r"eval.set: 'qa_eval' under .* was prepared with another tokenizer"):
    resolved(c, data_dir, tokenizer, str(tmp_path / "a"))
  more_frames = VideoSpec(**{**spec.to_dict(), "max_frames": 8})
  tfds_rewatch.prepare(str(tmp_path / "other_spec"), "qa_eval", test, toy, more_frames, tokenizer=tokenizer)
  c = sft_demo()
  c.eval.dir = str(tmp_path / "other_spec")
  with caplog.at_level(logging.WARNING):
    resolved(c, data_dir, tokenizer, str(tmp_path / "b"))  # allowed (the paper evaluates at 384 frames too)
  assert "the evaluation data was decoded with VideoSpec" in caplog.text


def test_resuming_checkpoints_of_another_tokenizer_or_architecture_stops(prepared, tmp_path):
  _, data_dir, tokenizer = prepared
  saved = tmp_path / "checkpoints"
  saved.mkdir()
  (saved / checkpoint.DATA_FILE).write_text(json.dumps({"tokenizer": "/elsewhere/tokenizer.json",
                                                        "tokenizer_hash": "0123456789abcdef"}))
  with pytest.raises(ConfigError, match=r"tokenizer: the checkpoints under .* were trained with tokenizer "
                                        r"/elsewhere/tokenizer.json \(hash 0123456789abcdef\).*use a new --workdir"):
    resolved(small_sft_config(), data_dir, tokenizer, str(tmp_path))
  (saved / checkpoint.DATA_FILE).unlink()
  c = small_sft_config()
  checkpoint.write_model_config(str(saved), ModelConfig.from_dict(c.model.to_dict()).replace(bos_token_id=3))
  with pytest.raises(ConfigError, match="model: the checkpoints under .* hold another architecture"):
    resolved(c, data_dir, tokenizer, str(tmp_path))


def test_examples_that_fit_no_training_bucket_are_counted_at_start(prepared, tmp_path, caplog):
  """Buckets too short for the CoT examples: said before the first batch (they would train as
  zero-weight stand-ins), from the shapes prepare kept."""
  _, data_dir, tokenizer = prepared
  c = small_sft_config()
  c.data.buckets = [dict(b, length=200) for b in c.data.buckets[:1]]
  with caplog.at_level(logging.WARNING):
    resolved(c, data_dir, tokenizer, str(tmp_path))
  assert "cot: " in caplog.text and "fit no bucket and train as zero-weight stand-ins" in caplog.text
  assert "qa: " not in caplog.text


def test_config_json_is_the_config_the_trainer_read(prepared, tmp_path, monkeypatch):
  """What the run wrote to config.json equals, key for key, the config the trainer ran with (it
  used to be written before the driver changed data.dir, tokenizer, eval.batch_size, total_steps)."""
  _, data_dir, tokenizer = prepared
  seen = []
  real = driver.sft.train
  monkeypatch.setattr(driver.sft, "train", lambda run, stage, model=None: seen.append((run, stage)) or real(run, stage, model))
  c = small_sft_config()
  c.total_steps, c.epochs, c.pretrain.steps = 0, 0.5, 2
  c.eval.enabled, c.eval.limit, c.eval.batch_size = True, 8, 0
  run = resolved(c, data_dir, tokenizer, str(tmp_path))
  driver.run(run)
  recorded = json.loads((tmp_path / "config.json").read_text())
  assert [stage.name for _, stage in seen] == ["pretrain", "sft"]
  for used, _ in seen:
    assert json.loads(used.config.to_json_best_effort()) == recorded
  assert recorded["data"]["dir"] == data_dir and recorded["tokenizer"] == tokenizer
  assert recorded["eval"]["batch_size"] == 8 and recorded["total_steps"] == seen[-1][1].total_steps > 0
  assert recorded["pretrain"]["batch_size"] == 8 and recorded["hooks"] == "rewatch_jax.demo.hooks:Demo"
  steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert steps[-1] == recorded["total_steps"]
  assert json.loads((tmp_path / "results.json").read_text())["after_sft"]["n"] == 8


def test_recipes_resolve_their_static_checks():
  """The published recipes pass every check that needs no data (they stop at data.dir)."""
  for arg in (None, "tiny"):
    c = sft_qwen2_5_vl_7b.get_config(arg)
    with pytest.raises(ConfigError, match="data.dir is empty"):
      resolve.resolve(c, "/tmp/unused")
