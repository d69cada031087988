"""The sampler against Hugging Face's `generate`, the cache against the full forward, the sampling
rules, samples sharing one prefill, early stops and the length checks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rewatch_jax import hf
from rewatch_jax.generate import generate, generate_hf_inputs
from rewatch_jax.generate.sampler import _choose
from rewatch_jax.models import Qwen25VL, from_hf_inputs
from tests.hf_reference import build_hf_model, make_batch, tiny_config, torch

# Left-padded prompts where Qwen's position rule and transformers >= 5.3's agree (an image; a video
# no longer than it is wide), so HF's generate computes the same M-RoPE ids as we do.
PROMPTS = [[3, ("image", (1, 8, 8)), 5], [2, ("video", (2, 8, 8), 1.0), 4], [6]]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
  ref = build_hf_model(tiny_config(), seed=1)
  path = tmp_path_factory.mktemp("hf_sampler")
  ref.save_pretrained(path)
  return ref, hf.load_pretrained(str(path))


def _hf_generate(ref, batch, steps, eos):
  kw = {k: torch.from_numpy(np.asarray(v)) for k, v in batch.items()}
  types = np.zeros_like(batch["input_ids"])
  types[batch["input_ids"] == ref.config.image_token_id] = 1
  types[batch["input_ids"] == ref.config.video_token_id] = 2
  with torch.no_grad():
    out = ref.generate(**kw, mm_token_type_ids=torch.from_numpy(types), max_new_tokens=steps,
                       do_sample=False, eos_token_id=eos, pad_token_id=eos, output_scores=True,
                       return_dict_in_generate=True)
  tokens = out.sequences[:, batch["input_ids"].shape[1]:].numpy()
  scores = torch.stack(out.scores, 1).float()
  return tokens, torch.log_softmax(scores, -1).gather(-1, torch.from_numpy(tokens)[..., None])[..., 0].numpy()


def test_greedy_equals_hf_generate_token_for_token_with_its_scores(models):
  """Text, image and video prompts in one left-padded batch: the same tokens as HF's generate with
  its KV cache, and log-probabilities equal to the log-softmax of its scores."""
  ref, ours = models
  batch = make_batch(ours.config, PROMPTS, seed=2)
  steps = 12
  expected, expected_logprobs = _hf_generate(ref, batch, steps, eos=ours.config.text.vocab_size - 1)
  got = generate_hf_inputs(ours, max_new_tokens=steps, eos_id=ours.config.text.vocab_size - 1, **batch)
  assert got.tokens.shape == (3, steps) and got.tokens.dtype == np.int32 and got.logprobs.dtype == np.float32
  np.testing.assert_array_equal(got.tokens, expected)
  np.testing.assert_allclose(got.logprobs, expected_logprobs, atol=1e-4)
  assert (got.lengths == steps).all()


def test_decode_with_the_cache_equals_the_full_forward(models):
  """Prefill then one token at a time, two samples of each prompt: every step's logits equal the
  full forward over the prompt and the tokens so far (right after padding on either side)."""
  _, model = models
  cfg = model.config
  steps, samples = 4, 2
  batch = make_batch(cfg, [[3, ("video", (2, 4, 4), 1.0), 4], [2, ("image", (1, 4, 4)), 1]], seed=7)
  new = np.random.default_rng(0).integers(0, 400, (2, steps))
  full_batch = dict(batch, input_ids=np.concatenate([batch["input_ids"], new], 1),
                    attention_mask=np.concatenate([batch["attention_mask"], np.ones_like(new)], 1))
  full_inputs = jax.tree.map(jnp.asarray, from_hf_inputs(cfg, **full_batch))
  full = np.asarray(model(full_inputs))
  length = batch["input_ids"].shape[1]
  prompt = jax.tree.map(jnp.asarray, from_hf_inputs(cfg, **batch))
  hidden, cache = nnx.jit(lambda m, x: m.prefill(x, samples, steps))(model, prompt)
  np.testing.assert_allclose(np.asarray(model.text.logits(hidden[:, -1])), full[:, length - 1], atol=1e-5)
  assert cache.prefix_k[0].shape[0] == 2 and cache.k[0].shape[0] == 2 * samples  # the prompt's keys once
  step = nnx.jit(lambda m, t, p, c: m.decode_step(t, p, c))
  for k in range(steps):
    pos = np.repeat(np.asarray(full_inputs.positions[0, :, length + k]), samples)
    logits, cache = step(model, jnp.asarray(np.repeat(new[:, k], samples)), jnp.asarray(pos), cache)
    np.testing.assert_allclose(np.asarray(logits), np.repeat(full[:, length + k], samples, 0), atol=1e-5)


def test_samples_share_one_prefill_and_differ_when_sampled(models):
  _, model = models
  batch = make_batch(model.config, PROMPTS, seed=3)
  one = generate_hf_inputs(model, max_new_tokens=6, eos_id=10_000, **batch)
  three = generate_hf_inputs(model, max_new_tokens=6, eos_id=10_000, num_samples=3, **batch)
  np.testing.assert_array_equal(three.tokens, np.repeat(one.tokens, 3, 0))  # a prompt's samples consecutive
  np.testing.assert_allclose(three.logprobs, np.repeat(one.logprobs, 3, 0), atol=1e-5)
  hot = generate_hf_inputs(model, max_new_tokens=6, eos_id=10_000, num_samples=4, temperature=1.5, seed=1, **batch)
  assert len({tuple(r) for r in hot.tokens[:4]}) > 1  # the samples of one prompt differ
  again = generate_hf_inputs(model, max_new_tokens=6, eos_id=10_000, num_samples=4, temperature=1.5, seed=1, **batch)
  np.testing.assert_array_equal(hot.tokens, again.tokens)  # one seed, one draw
  # the vision tower runs on the prompts' rows once (when the generation is traced), not on every sample's
  inputs = jax.tree.map(jnp.asarray, from_hf_inputs(model.config, **batch))
  towers = []
  real_tower = type(model.visual).__call__
  with pytest.MonkeyPatch.context() as m:
    m.setattr(type(model.visual), "__call__", lambda self, pixels, *a: towers.append(pixels.shape) or
              real_tower(self, pixels, *a))
    generate(model, inputs, max_new_tokens=3, stop_ids=[10_000], num_samples=4, seed=5)
  assert towers == [inputs.pixel_values.shape]


def test_each_row_stops_at_any_of_its_stop_ids(models):
  _, model = models
  batch = make_batch(model.config, PROMPTS, seed=4)
  free = generate_hf_inputs(model, max_new_tokens=10, eos_id=10_000, **batch)
  stop_a, stop_b = int(free.tokens[0, 2]), int(free.tokens[1, 5])
  out = generate_hf_inputs(model, max_new_tokens=10, eos_id=[stop_a, stop_b], **batch)
  for row in range(3):
    hits = [i for i, t in enumerate(free.tokens[row]) if t in (stop_a, stop_b)]
    length = hits[0] + 1 if hits else 10
    assert out.lengths[row] == length
    np.testing.assert_array_equal(out.tokens[row, :length], free.tokens[row, :length])
    assert (out.tokens[row, length:] == stop_a).all() and (out.logprobs[row, length:] == 0).all()
  assert out.lengths[0] <= 3 and out.lengths[1] <= 6


def test_sampling_rules_on_known_logits():
  """top_k keeps the k most likely tokens, top_p the fewest whose probability reaches p, the draw
  follows the temperature-scaled probabilities, and the log-probability is under the scaled
  distribution before the cut."""
  logits = jnp.log(jnp.array([[0.05, 0.4, 0.1, 0.3, 0.15]] * 4000))
  draw = lambda key, **kw: _choose(logits, jax.random.key(key), **kw)
  tokens, logprobs = draw(0, temperature=1.0, top_p=1.0, top_k=2)
  assert set(np.asarray(tokens).tolist()) == {1, 3}
  np.testing.assert_allclose(np.asarray(logprobs), np.log(np.array([0.05, 0.4, 0.1, 0.3, 0.15]))[tokens], rtol=1e-5)
  tokens, _ = draw(1, temperature=1.0, top_p=0.8, top_k=0)  # 0.4 + 0.3 < 0.8 <= 0.4 + 0.3 + 0.15
  assert set(np.asarray(tokens).tolist()) == {1, 3, 4}
  tokens, _ = draw(2, temperature=1.0, top_p=1.0, top_k=0)
  freq = np.bincount(np.asarray(tokens), minlength=5) / 4000
  np.testing.assert_allclose(freq, [0.05, 0.4, 0.1, 0.3, 0.15], atol=0.03)
  tokens, logprobs = draw(3, temperature=0.5, top_p=1.0, top_k=0)
  sharp = np.array([0.05, 0.4, 0.1, 0.3, 0.15]) ** 2
  sharp /= sharp.sum()
  np.testing.assert_allclose(np.bincount(np.asarray(tokens), minlength=5) / 4000, sharp, atol=0.03)
  np.testing.assert_allclose(np.asarray(logprobs), np.log(sharp)[tokens], rtol=1e-4)
  tokens, logprobs = draw(4, temperature=0.0, top_p=1.0, top_k=0)
  assert (np.asarray(tokens) == 1).all() and np.allclose(np.asarray(logprobs), np.log(0.4))


def test_lengths_beyond_the_model_or_the_bucket_fail_before_generating(models):
  _, model = models
  inputs = jax.tree.map(jnp.asarray, from_hf_inputs(model.config, **make_batch(model.config, [[6]])))
  short = model.config.replace(text=model.config.text.__class__(**{**model.config.text.__dict__,
                                                                   "max_position_embeddings": 10}))
  limited = nnx.merge(nnx.graphdef(nnx.eval_shape(lambda: Qwen25VL(short, rngs=nnx.Rngs(0)))), nnx.state(model))
  with pytest.raises(ValueError, match="would pass the model's max_position_embeddings"):
    generate(limited, inputs, max_new_tokens=8, stop_ids=[0])
  with pytest.raises(ValueError, match="exceed max_length=10"):
    generate(model, inputs, max_new_tokens=8, stop_ids=[0], max_length=10)
  with pytest.raises(ValueError, match="0 < top_p <= 1"):
    generate(model, inputs, max_new_tokens=8, stop_ids=[0], top_p=0.0)


def test_generation_with_remat_configured():
  """The recipes train with remat; generating (evaluation, RL's sampler) with such a model gives
  the same tokens (remat is for the backward pass; in the decode loop it once failed to trace)."""
  tokens = []
  for policy in ("none", "full", "dots"):
    cfg = tiny_config().replace(remat=policy)
    batch = make_batch(cfg, [[3, ("video", (2, 4, 4), 1.0), 4], [2]], seed=4)
    model = Qwen25VL(cfg, rngs=nnx.Rngs(3))
    tokens.append(generate_hf_inputs(model, max_new_tokens=5, eos_id=10_000, **batch).tokens)
  np.testing.assert_array_equal(tokens[0], tokens[1])
  np.testing.assert_array_equal(tokens[0], tokens[2])


def test_on_a_mesh_rows_are_data_parallel_and_decoding_gathers_no_weights(models):
  """On 8 devices (data 2 x fsdp 4): the same tokens as on one device, rows and cache split over the
  batch axes; with the sampler's layout (for_sampling) the compiled generation holds no all-gather,
  where the training layout (FSDP-split weights) gathers weights inside the decode loop."""
  from rewatch_jax.data import pipeline
  from rewatch_jax.generate import for_sampling
  from rewatch_jax.generate.sampler import _sample
  from rewatch_jax.mesh import make_mesh
  from rewatch_jax.models.sharding import axis_rules, param_shardings
  _, model = models
  mesh = make_mesh({"data": 2, "fsdp": 4, "tensor": 1})
  batch = make_batch(model.config, (PROMPTS * 3)[:8], seed=6)
  host = from_hf_inputs(model.config, **batch)
  placed = pipeline.to_global(dict(inputs=host), mesh)[0]["inputs"]
  graphdef, state = nnx.split(model)
  fsdp = nnx.merge(graphdef, jax.device_put(state, param_shardings(state, mesh)))
  sampler = for_sampling(fsdp, mesh)
  want = generate(model, jax.tree.map(jnp.asarray, host), max_new_tokens=5, stop_ids=[10_000], num_samples=2)
  got = generate(sampler, placed, max_new_tokens=5, stop_ids=[10_000], num_samples=2, mesh=mesh)
  np.testing.assert_array_equal(np.asarray(got.tokens), np.asarray(want.tokens))
  np.testing.assert_allclose(np.asarray(got.logprobs), np.asarray(want.logprobs), atol=1e-5)
  assert got.tokens.sharding.spec[0] == ("data", "fsdp")
  for variable in jax.tree.leaves(nnx.state(sampler, nnx.Param)):  # whole on every data/fsdp device
    assert not {"data", "fsdp"} & set(jax.tree.leaves(tuple(variable.sharding.spec)))

  def gathers(m) -> int:
    g, s = nnx.split(m)
    def run(s, x, key):
      with axis_rules(mesh):
        return _sample(nnx.merge(g, s), x, key, 5, (10_000,), 0.0, 1.0, 0, 2)
    return jax.jit(run).lower(s, placed, jax.random.key(0)).compile().as_text().count("all-gather(")
  assert gathers(sampler) == 0 and gathers(fsdp) > 0
