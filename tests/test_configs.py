"""Model configs: published sizes against their config.json, ml_collections round trips, errors."""

import json
import math

import pytest

from configs import demo, models
from rewatch_jax.models import PRESETS, ConfigError, ModelConfig

# config.json of Qwen/Qwen2.5-VL-7B-Instruct as published (transformers 4 flat layout).
QWEN25_VL_7B = json.loads("""{
  "architectures": ["Qwen2_5_VLForConditionalGeneration"], "attention_dropout": 0.0,
  "bos_token_id": 151643, "eos_token_id": 151645, "vision_start_token_id": 151652,
  "vision_end_token_id": 151653, "vision_token_id": 151654, "image_token_id": 151655,
  "video_token_id": 151656, "hidden_act": "silu", "hidden_size": 3584, "initializer_range": 0.02,
  "intermediate_size": 18944, "max_position_embeddings": 128000, "max_window_layers": 28,
  "model_type": "qwen2_5_vl", "num_attention_heads": 28, "num_hidden_layers": 28,
  "num_key_value_heads": 4, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0,
  "sliding_window": 32768, "tie_word_embeddings": false, "torch_dtype": "bfloat16",
  "transformers_version": "4.41.2", "use_cache": true, "use_sliding_window": false,
  "vision_config": {"depth": 32, "hidden_act": "silu", "hidden_size": 1280,
    "intermediate_size": 3420, "num_heads": 16, "in_chans": 3, "out_hidden_size": 3584,
    "patch_size": 14, "spatial_merge_size": 2, "spatial_patch_size": 14, "window_size": 112,
    "fullatt_block_indexes": [7, 15, 23, 31], "tokens_per_second": 2, "temporal_patch_size": 2},
  "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]}, "vocab_size": 152064
}""")


def test_7b_preset_matches_published_config():
  assert ModelConfig.from_hf_dict(QWEN25_VL_7B) == PRESETS["7b"]


def test_transformers_reads_our_config_like_we_do():
  transformers = pytest.importorskip("transformers")
  for name, cfg in PRESETS.items():
    theirs = transformers.Qwen2_5_VLConfig(**cfg.to_hf_dict())
    t, v = theirs.text_config, theirs.vision_config
    assert (t.hidden_size, t.num_hidden_layers, t.num_key_value_heads, t.vocab_size) == (
        cfg.text.hidden_size, cfg.text.num_hidden_layers, cfg.text.num_key_value_heads, cfg.text.vocab_size), name
    assert list(t.rope_parameters["mrope_section"]) == list(cfg.text.mrope_section)
    assert t.rope_parameters["rope_theta"] == cfg.text.rope_theta
    assert (v.depth, v.out_hidden_size, list(v.fullatt_block_indexes)) == (
        cfg.vision.depth, cfg.vision.out_hidden_size, list(cfg.vision.fullatt_block_indexes))
    assert theirs.tie_word_embeddings == cfg.text.tie_word_embeddings
    assert ModelConfig.from_hf_dict(theirs.to_dict()) == cfg  # and the transformers 5 layout back


@pytest.mark.parametrize("size", sorted(PRESETS))
def test_ml_collections_round_trip(size):
  assert ModelConfig.from_dict(models.get_config(size).to_dict()) == PRESETS[size]


def test_unknown_fields_and_sizes_fail():
  d = PRESETS["tiny"].to_dict()
  d["remat_policy"] = "full"
  with pytest.raises(ConfigError, match="remat_policy"):
    ModelConfig.from_dict(d)
  with pytest.raises(ValueError, match="unknown model size"):
    models.get_config("8b")
  with pytest.raises(ConfigError, match="model_type"):
    ModelConfig.from_hf_dict(dict(QWEN25_VL_7B, model_type="qwen2_vl"))


def test_demo_config_builds_a_valid_model_config():
  ModelConfig.from_dict(demo.get_config().model.to_dict())


def test_published_size_recipes_pad_mlps_and_mix_tasks_by_size():
  """The 3B/7B recipes draw tasks by weight x size (ReWatch's concatenation) and compute MLP widths
  padded to multiples of 128 (the vision MLP's 3420: the H200 step 1.19x, docs/model.md); their
  tiny variants, for CPUs, do not pad."""
  from configs import sft_qwen2_5_vl_3b, sft_qwen2_5_vl_7b
  for recipe in (sft_qwen2_5_vl_3b, sft_qwen2_5_vl_7b):
    assert recipe.get_config().data.mix_by_size  # ReWatch's concatenation of its three sets
    assert recipe.get_config().model.pad_mlp_to == 128
    assert recipe.get_config("tiny").model.pad_mlp_to == 1


@pytest.mark.parametrize("recipe_name", ["sft_qwen2_5_vl_3b", "sft_qwen2_5_vl_7b"])
def test_recipe_buckets_hold_videos_of_every_shape(recipe_name):
  """Every video size (144-2200 px high, aspect 1:4 to 4:1, 2-192 frames) at the recipe's VideoSpec
  fits a training and an evaluation bucket with 1536 tokens of text, and the usual source sizes
  with 4096. A frame's patch slots depend on its aspect ratio (whole windows, padded): with one
  576-slot bucket every 4:3 video fit none. (Text: small sources are scaled up to the spec's
  equal min/max pixels, rounding up, to as many as 14,784 video tokens at 1:4.)"""
  import importlib

  import numpy as np

  from rewatch_jax.data.batching import Bucket, fits
  from rewatch_jax.data.processor import video_grid
  from rewatch_jax.data.video import VideoSpec, frame_size
  c = importlib.import_module(f"configs.{recipe_name}").get_config()
  spec, cfg = VideoSpec(**c.video_spec.to_dict()), ModelConfig.from_dict(c.model.to_dict())
  train = [Bucket(**dict(b)) for b in c.data.buckets]
  evaluation = [Bucket(**dict(b)) for b in c.eval.buckets]

  def check(height, width, frames, text):
    h, w = frame_size(spec, height, width, frames)
    grid = np.array(video_grid(frames, h, w, cfg.vision))
    ex = dict(video_grid_thw=grid, input_ids=np.zeros(int(grid.prod()) // cfg.vision.merge_unit + text),
              loss_mask=np.ones(4, bool))
    prompt = dict(ex, loss_mask=np.zeros(4, bool))  # evaluation examples are prompts: nothing trained
    assert any(fits(ex, b, cfg) for b in train), (height, width, frames, h, w)
    assert any(fits(prompt, b, cfg) for b in evaluation), (height, width, frames, h, w)

  for frames in (192, 40, 2):
    for height in range(144, 2200, 40):
      for aspect in np.linspace(0.25, 4.0, 45):
        check(height, int(height * aspect), frames, text=1536)
    for height, width in ((1080, 1920), (720, 1280), (480, 640), (480, 720), (1080, 1440), (1920, 1080),
                          (1080, 1080), (1080, 2560), (2160, 3840), (576, 720)):
      check(height, width, frames, text=4096)


@pytest.mark.parametrize("recipe_name", ["sft_qwen2_5_vl_3b", "sft_qwen2_5_vl_7b"])
def test_recipe_train_step_and_generation_trace_at_every_bucket(recipe_name):
  """The recipe's real-size step (float32 master weights, bf16 compute, full remat, padded MLPs,
  its optimizer) traced abstractly, no weights: every bucket's shapes go through, and the new
  state has the old one's shapes and dtypes (else each step would recompile). Then greedy
  generation at every evaluation bucket."""
  import importlib

  import jax
  import jax.numpy as jnp
  from flax import nnx

  from rewatch_jax.data.batching import Bucket
  from rewatch_jax.generate.sampler import _generate
  from rewatch_jax.models import Qwen25VL
  from rewatch_jax.models.inputs import ModelInputs
  from rewatch_jax.train import sft
  from rewatch_jax.train.state import TrainState, make_optimizer
  c = importlib.import_module(f"configs.{recipe_name}").get_config()
  cfg = ModelConfig.from_dict(c.model.to_dict())
  graphdef, params = nnx.split(nnx.eval_shape(lambda: Qwen25VL(cfg, rngs=nnx.Rngs(0))))
  tx, _ = make_optimizer(c.optimizer, c.total_steps, params)
  spec = lambda *shape, dtype=jnp.int32: jax.ShapeDtypeStruct(shape, dtype)
  state = TrainState(params=params, opt_state=jax.eval_shape(tx.init, params), step=spec(),
                     rng=spec(2, dtype=jnp.uint32), bad_streak=spec(), max_bad_streak=spec())
  step = sft.make_train_step(graphdef, tx, c.micro_batches, len(c.data.weights))

  def inputs(n, b):
    return ModelInputs(input_ids=spec(n, b.length), attention_mask=spec(n, b.length), positions=spec(3, n, b.length),
                       pixel_values=spec(n, b.patches, cfg.vision.patch_dim, dtype=jnp.uint8),
                       vision_rotary_ids=spec(n, b.patches, 2), window_segment=spec(n, b.patches),
                       frame_segment=spec(n, b.patches), vision_token_index=spec(n, b.length), frame_block=b.frame_block)

  for b in [Bucket(**dict(b)) for b in c.data.buckets]:
    n, k = c.micro_batches, b.loss_tokens
    batch = dict(inputs=inputs(n, b), loss_index=spec(n, k), loss_targets=spec(n, k),
                 loss_weights=spec(n, k, dtype=jnp.float32), task=spec(n))
    new_state, metrics = jax.eval_shape(step, state, batch)
    assert jax.tree.map(lambda a: (a.shape, a.dtype), new_state) == jax.tree.map(lambda a: (a.shape, a.dtype), state)
    assert metrics["loss"].dtype == jnp.float32
  # and generation (evaluation; RL's sampler) at every evaluation bucket, with the recipe's remat,
  # which the decode loop's trace once could not take
  model = nnx.merge(graphdef, params)
  for b in [Bucket(**dict(b)) for b in c.eval.buckets]:
    out = nnx.eval_shape(lambda m, x: _generate(m, x, jax.random.key(0), max_new_tokens=c.eval.max_new_tokens,
                                                stop_ids=cfg.stop_token_ids, temperature=0.0, top_p=1.0, top_k=0,
                                                num_samples=1), model, inputs(1, b))
    assert out.tokens.shape == (1, c.eval.max_new_tokens)
  # and RL's rollouts: the paper's sampling (temperature 0.8, top_p 0.9: a sort of the 152k vocabulary)
  out = nnx.eval_shape(lambda m, x: _generate(m, x, jax.random.key(0), max_new_tokens=64, stop_ids=cfg.stop_token_ids,
                                              temperature=0.8, top_p=0.9, top_k=0, num_samples=2), model, inputs(1, b))
  assert out.tokens.shape == out.logprobs.shape == (2, 64)


def test_grpo_recipe_update_traces_at_the_real_size():
  """The 7B RL recipe's update (two prompts of its largest bucket, 8 samples each, its response
  length, the reference's KL) traced abstractly: the state keeps its shapes and dtypes."""
  import jax
  import jax.numpy as jnp
  from flax import nnx

  from configs import grpo_qwen2_5_vl_7b as recipe
  from rewatch_jax.data.batching import Bucket
  from rewatch_jax.models import Qwen25VL
  from rewatch_jax.models.inputs import ModelInputs
  from rewatch_jax.train import grpo
  from rewatch_jax.train.state import TrainState, make_optimizer
  c = recipe.get_config()
  assert (c.total_steps, c.rl.epochs, c.rl.samples, c.rl.temperature, c.rl.top_p) == (0, 1.0, 8, 0.8, 0.9)
  rl = c.rl
  rl.prompts_per_step = 2  # (a shard's share: the trace is per global batch)
  cfg = ModelConfig.from_dict(c.model.to_dict())
  graphdef, params = nnx.split(nnx.eval_shape(lambda: Qwen25VL(cfg, rngs=nnx.Rngs(0))))
  tx, _ = make_optimizer(c.optimizer, 10, params)
  spec = lambda *shape, dtype=jnp.int32: jax.ShapeDtypeStruct(shape, dtype)
  state = TrainState(params=params, opt_state=jax.eval_shape(tx.init, params), step=spec(),
                     rng=spec(2, dtype=jnp.uint32), bad_streak=spec(), max_bad_streak=spec())
  b = max((Bucket(**dict(b)) for b in rl.buckets), key=lambda b: b.patches)
  n, rows, new = 2, 2 * rl.samples, rl.max_new_tokens
  prompts = ModelInputs(input_ids=spec(n, b.length), attention_mask=spec(n, b.length), positions=spec(3, n, b.length),
                        pixel_values=spec(n, b.patches, cfg.vision.patch_dim, dtype=jnp.uint8),
                        vision_rotary_ids=spec(n, b.patches, 2), window_segment=spec(n, b.patches),
                        frame_segment=spec(n, b.patches), vision_token_index=spec(n, b.length),
                        frame_block=b.frame_block)
  f32 = jnp.float32
  batch = dict(prompts=prompts, responses=spec(rows, new), lengths=spec(rows), sampler_logprobs=spec(rows, new, dtype=f32),
               ref_logprobs=spec(rows, new, dtype=f32), advantages=spec(rows, dtype=f32), weights=spec(rows, dtype=f32))
  new_state, metrics = jax.eval_shape(grpo.make_update(graphdef, tx, rl), state, batch)
  assert jax.tree.map(lambda a: (a.shape, a.dtype), new_state) == jax.tree.map(lambda a: (a.shape, a.dtype), state)
  assert metrics["loss"].dtype == jnp.float32
  logprobs = jax.eval_shape(grpo.make_logprobs(graphdef, rl), params, batch)
  assert logprobs.shape == (rows, new)


# Parameter counts of the released checkpoints (Qwen/Qwen2.5-VL-{3B,7B}-Instruct model cards).
PUBLISHED_PARAMS = {"3b": 3_754_622_976, "7b": 8_292_166_656}


@pytest.mark.parametrize("size", sorted(PUBLISHED_PARAMS))
def test_published_sizes_map_one_to_one_onto_hf_tensors(size):
  """At full size, without weights: transformers builds the model on the meta device, we build
  ours abstractly, and hf.name_map pairs every tensor of one with a tensor of the other, shapes
  included (the loader's whole contract at the size users load)."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  from flax import nnx

  from rewatch_jax import hf
  from rewatch_jax.models import Qwen25VL
  cfg = PRESETS[size]
  with torch.device("meta"):
    theirs = transformers.Qwen2_5_VLForConditionalGeneration(transformers.Qwen2_5_VLConfig(**cfg.to_hf_dict()))
  hf_shapes = {hf._canonical(k): tuple(p.shape) for k, p in theirs.named_parameters()}  # tied lm_head: once
  assert sum(p.numel() for p in theirs.parameters()) == PUBLISHED_PARAMS[size]
  ours = {tuple(path): v.shape for path, v in nnx.to_flat_state(nnx.state(
      nnx.eval_shape(lambda: Qwen25VL(cfg, rngs=nnx.Rngs(0)))))}
  table = hf.name_map(cfg)
  assert set(table) == set(hf_shapes)
  assert sorted(path for path, _ in table.values()) == sorted(ours)
  for name, (path, kind) in table.items():
    assert hf._our_shape(hf_shapes[name], kind) == tuple(ours[path]), name
  assert sum(math.prod(s) for s in ours.values()) == PUBLISHED_PARAMS[size]


@pytest.mark.parametrize("size", ["3b", "7b", "32b", "72b"])
def test_published_sizes_shard_on_pod_meshes(size, caplog, monkeypatch):
  """Every parameter of every published size gets a sharding JAX can place on pod-sized meshes
  (abstract: no devices needed): FSDP over 256 or 512 chips, FSDP x tensor 16 x 8 and 64 x 4. A
  dimension a mesh does not divide (the vision tower's 1280 over 512, the 3B/7B vision MLP's 3420
  over 8) is replicated along that axis and named in a warning; the language model stays sharded."""
  import jax
  from flax import nnx

  from rewatch_jax.models import Qwen25VL, sharding
  cfg = PRESETS[size]
  state = nnx.state(nnx.eval_shape(lambda: Qwen25VL(cfg, rngs=nnx.Rngs(0))))
  for fsdp, tensor in ((256, 1), (512, 1), (16, 8), (64, 4)):
    mesh = jax.sharding.AbstractMesh((1, fsdp, tensor), ("data", "fsdp", "tensor"))
    caplog.clear()
    monkeypatch.setattr(sharding, "_WARNED", set())
    shardings = sharding.param_shardings(state, mesh)
    placed = {tuple(p): (v.shape, s) for (p, v), (_, s) in zip(nnx.to_flat_state(state), nnx.to_flat_state(shardings))}
    for shape, s in placed.values():
      s.shard_shape(shape)  # raises where a sharded dimension is not divisible
    assert placed[("text", "layers", 0, "mlp", "gate", "kernel")][1].spec == jax.sharding.PartitionSpec("fsdp", "tensor")
    assert "text." not in caplog.text
    assert ("visual.patch_embed.kernel" in caplog.text) == (cfg.vision.hidden_size % fsdp != 0), (fsdp, tensor)
    assert ("visual.blocks.*.mlp.gate.bias" in caplog.text) == (cfg.vision.intermediate_size % tensor != 0), (fsdp, tensor)
