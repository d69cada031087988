"""Model behaviour beyond parity: one compilation per bucket, KV cache, sharding, dtypes, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rewatch_jax import hf
from rewatch_jax.models import ConfigError, from_hf_inputs
from rewatch_jax.models.sharding import axis_rules
from tests.hf_reference import build_hf_model, make_batch, tiny_config


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
  path = tmp_path_factory.mktemp("hf")
  build_hf_model(tiny_config()).save_pretrained(path)
  return str(path)


@pytest.fixture(scope="module")
def model(hf_dir):
  return hf.load_pretrained(hf_dir)


def _pure(model):
  graphdef, state = nnx.split(model)
  return state, jax.jit(lambda state, inputs: nnx.merge(graphdef, state)(inputs))


def test_one_compilation_per_bucket(model):
  state, fwd = _pure(model)
  cfg = model.config
  for seed, grid in enumerate([(2, 8, 8), (4, 6, 4), (2, 4, 12), (6, 2, 2)]):
    batch = make_batch(cfg, [[3, ("video", grid, 0.5 + seed), 4], [5]], seed=seed, pad_to=48)
    inputs = from_hf_inputs(cfg, **batch, pad_patches_to=384, frame_block=64)
    logits = fwd(state, jax.tree.map(jnp.asarray, inputs))
    assert np.isfinite(np.asarray(logits)).all()
  assert fwd._cache_size() == 1


def test_padding_patches_does_not_change_logits(model):
  cfg = model.config
  batch = make_batch(cfg, [[3, ("video", (2, 6, 4), 1.0), 4], [2, ("image", (1, 4, 4)), 1]])
  tight = model(jax.tree.map(jnp.asarray, from_hf_inputs(cfg, **batch)))
  padded = model(jax.tree.map(jnp.asarray, from_hf_inputs(cfg, **batch, pad_patches_to=256, frame_block=64)))
  real = batch["attention_mask"].astype(bool)
  np.testing.assert_allclose(np.asarray(tight)[real], np.asarray(padded)[real], atol=1e-5)


def test_sharded_load_and_forward_on_8_devices(model, hf_dir):
  mesh = jax.make_mesh((2, 2, 2), ("data", "fsdp", "tensor"),
                       axis_types=(jax.sharding.AxisType.Auto,) * 3)
  sharded = hf.load_pretrained(hf_dir, mesh=mesh)
  kernel = sharded.text.layers[0].mlp.gate.kernel[...]
  assert kernel.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")
  assert len(kernel.addressable_shards) == 8
  cfg = model.config
  batch = make_batch(cfg, [[3, ("video", (2, 4, 4), 1.0), 4], [6]], seed=1)
  inputs = jax.tree.map(jnp.asarray, from_hf_inputs(cfg, **batch))
  with axis_rules(mesh):
    got = nnx.jit(lambda m, x: m(x))(sharded, inputs)
  real = batch["attention_mask"].astype(bool)
  np.testing.assert_allclose(np.asarray(got)[real], np.asarray(model(inputs))[real], atol=1e-5)


def test_a_mesh_that_does_not_divide_a_parameter_still_runs(caplog, monkeypatch):
  """A vision MLP 60 wide on tensor=8 (as the 7B's 3420 on a 16 x 8 pod mesh): those weights are
  replicated along `tensor`, a warning names them, and the sharded model computes the same."""
  import dataclasses

  from rewatch_jax.models import Qwen25VL, sharding
  base = tiny_config()
  cfg = base.replace(vision=dataclasses.replace(base.vision, intermediate_size=60))
  model = Qwen25VL(cfg, rngs=nnx.Rngs(0))
  batch = make_batch(cfg, [[3, ("video", (2, 4, 4), 1.0), 4], [6]], seed=1)
  inputs = jax.tree.map(jnp.asarray, from_hf_inputs(cfg, **batch))
  mesh = jax.make_mesh((1, 1, 8), ("data", "fsdp", "tensor"), axis_types=(jax.sharding.AxisType.Auto,) * 3)
  monkeypatch.setattr(sharding, "_WARNED", set())
  graphdef, state = nnx.split(model)
  sharded = nnx.merge(graphdef, jax.device_put(state, sharding.param_shardings(state, mesh)))
  assert "visual.blocks.*.mlp.gate.kernel (32, 60)" in caplog.text
  assert sharded.visual.blocks[0].mlp.gate.kernel[...].sharding.spec == jax.sharding.PartitionSpec("fsdp", None)
  assert sharded.text.layers[0].mlp.gate.kernel[...].sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")
  with axis_rules(mesh):
    got = nnx.jit(lambda m, x: m(x))(sharded, inputs)
  real = batch["attention_mask"].astype(bool)
  np.testing.assert_allclose(np.asarray(got)[real], np.asarray(model(inputs))[real], atol=1e-5)


def test_bf16_and_remat(hf_dir, model):
  cfg = model.config
  batch = make_batch(cfg, [[3, ("image", (1, 8, 8)), 4]], seed=2)
  inputs = jax.tree.map(jnp.asarray, from_hf_inputs(cfg, **batch))
  ref = np.asarray(model(inputs))
  bf16 = hf.load_pretrained(hf_dir, dtype="bfloat16")
  assert bf16.text.embed_tokens[...].dtype == jnp.bfloat16
  out = np.asarray(bf16(inputs))
  assert out.dtype == np.float32 and np.abs(out - ref).max() < 0.1

  def grad_of(m):
    loss = lambda m: jnp.mean(m(inputs) ** 2)
    return nnx.grad(loss)(m)
  remat = hf.load_pretrained(hf_dir, remat="full")
  g0, g1 = grad_of(model), grad_of(remat)
  for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)


# ---- bad input: every problem is named, nothing is silently broadcast ----

def _video_batch(cfg):
  return make_batch(cfg, [[2, ("video", (2, 4, 4), 1.0), 2]])


@pytest.mark.parametrize("mutate, message", [
    (lambda b: b.update(pixel_values_videos=b["pixel_values_videos"][:-4]), "describes 32 patch rows but 28"),
    (lambda b: b.update(video_grid_thw=np.array([[2, 4, 8]])), "describes 64 patch rows"),
    (lambda b: b.update(pixel_values_videos=b["pixel_values_videos"][:, :100]), "pixel rows must be"),
])
def test_inconsistent_vision_inputs(model, mutate, message):
  batch = _video_batch(model.config)
  mutate(batch)
  with pytest.raises(ValueError, match=message):
    from_hf_inputs(model.config, **batch)


def test_token_feature_count_mismatch(model):
  cfg = model.config
  batch = _video_batch(cfg)
  ids = batch["input_ids"].copy()
  ids[0, ids[0] == cfg.vision_end_token_id] = cfg.video_token_id  # one video token too many
  with pytest.raises(ValueError, match="more video placeholder tokens in input_ids than the video grids cover"):
    from_hf_inputs(cfg, **dict(batch, input_ids=ids))
  ids[0, -1] = cfg.text.vocab_size  # out of the vocabulary
  with pytest.raises(ValueError, match="outside"):
    from_hf_inputs(cfg, **dict(batch, input_ids=ids))
  ids = batch["input_ids"]
  with pytest.raises(ValueError, match="more video placeholder tokens"):
    from_hf_inputs(cfg, **dict(batch, input_ids=np.concatenate([ids, ids], 1),
                               attention_mask=np.ones((1, 2 * ids.shape[1]), np.int64)))
  with pytest.raises(ValueError, match="placeholders for only 0"):
    from_hf_inputs(cfg, **dict(batch, input_ids=np.full_like(ids, 7)))
  with pytest.raises(ValueError, match="odd|multiples of 2"):
    from_hf_inputs(cfg, **dict(batch, video_grid_thw=np.array([[2, 4, 3]]),
                               pixel_values_videos=batch["pixel_values_videos"][:24]))
  with pytest.raises(ValueError, match="bucket size 16"):
    from_hf_inputs(cfg, **batch, pad_patches_to=16)


def test_bad_configs_are_named():
  cfg = tiny_config()
  with pytest.raises(ConfigError, match="mrope_section"):
    cfg.replace(text=cfg.text.__class__(**{**cfg.text.__dict__, "mrope_section": (2, 2, 2)})).validate()
  with pytest.raises(ConfigError, match="out_hidden_size"):
    cfg.replace(vision=cfg.vision.__class__(**{**cfg.vision.__dict__, "out_hidden_size": 48})).validate()
  with pytest.raises(ConfigError, match="fullatt_block_indexes"):
    cfg.replace(vision=cfg.vision.__class__(**{**cfg.vision.__dict__, "fullatt_block_indexes": (5,)})).validate()
  with pytest.raises(ConfigError, match="attention must be xla|cudnn"):
    cfg.replace(attention="flash").validate()
  with pytest.raises(ConfigError, match="needs dtype='bfloat16'"):
    cfg.replace(attention="cudnn").validate()


def test_cudnn_attention_off_gpu_is_named():
  from rewatch_jax.models.layers import causal_attention
  x = jnp.zeros((1, 8, 2, 16), jnp.bfloat16)
  if jax.default_backend() == "gpu":
    pytest.skip("runs on a GPU")
  with pytest.raises(ValueError, match="needs an NVIDIA GPU.*attention=xla"):
    causal_attention(x, x, x, jnp.ones((1, 8, 8), bool), "cudnn")


def test_build_model_from_hf_takes_the_runtime_options(hf_dir):
  """config.model's dtype, param_dtype, remat and attention all reach a model loaded from HF
  (the compute dtype used to be forced to the parameter dtype)."""
  from rewatch_jax.mesh import make_mesh
  from rewatch_jax.train import resolve, state
  from tests.conftest import small_sft_config
  c = small_sft_config()
  c.init_from_hf = hf_dir
  c.model.update(dict(param_dtype="float32", dtype="bfloat16", remat="full", attention="xla"))
  m = state.build_model(c, resolve._model(c), make_mesh({"data": 1}, jax.devices()[:1]))
  assert (m.config.param_dtype, m.config.dtype, m.config.remat, m.config.attention) == (
      "float32", "bfloat16", "full", "xla")
  assert m.text.layers[0].mlp.gate.kernel[...].dtype == jnp.float32


def test_causal_only_attention_is_exact_on_right_padded_rows():
  """What attention='cudnn' computes (causal, no padding mask; run here with JAX's XLA reference
  of the same call) equals our masked attention on every real token, in bf16 with grouped KV."""
  from rewatch_jax.models.layers import attention, causal_attention
  rng = np.random.default_rng(0)
  q = jnp.asarray(rng.standard_normal((2, 48, 8, 16)), jnp.bfloat16)
  k, v = (jnp.asarray(rng.standard_normal((2, 48, 2, 16)), jnp.bfloat16) for _ in range(2))
  valid = np.arange(48)[None] < np.array([[48], [30]])  # the second row ends in padding
  mask = jnp.asarray(valid[:, None, :] & np.tril(np.ones((48, 48), bool))[None])
  ours = np.asarray(causal_attention(q, k, v, mask, "xla"), np.float32)
  fused = np.asarray(causal_attention(q, k, v, mask, impl=None), np.float32)  # jax picks xla on CPU
  np.testing.assert_allclose(fused[valid], ours[valid], atol=0.02)
  assert np.abs(fused[~valid] - ours[~valid]).max() > 0.05  # only padding rows differ
  np.testing.assert_allclose(np.asarray(attention(q, k, v, mask), np.float32), ours, atol=0.02)


@pytest.mark.parametrize("chunks", [2, 3, 7])
def test_causal_query_chunks_are_exact(chunks):
  """The xla path's query chunks (each sees only the keys up to its last row) change nothing on
  real tokens, forward or backward, with left and right padding and uneven chunk sizes."""
  from rewatch_jax.models.layers import causal_attention
  rng = np.random.default_rng(1)
  q, out_grad = (jnp.asarray(rng.standard_normal((3, 40, 4, 8)), jnp.float32) for _ in range(2))
  k, v = (jnp.asarray(rng.standard_normal((3, 40, 2, 8)), jnp.float32) for _ in range(2))
  pos = np.arange(40)[None]
  valid = (pos < np.array([[40], [25], [40]])) & (pos >= np.array([[0], [0], [9]]))  # right, left pad
  mask = jnp.asarray(valid[:, None, :] & np.tril(np.ones((40, 40), bool))[None])
  real = jnp.asarray(valid)[:, :, None, None]

  def out_and_grads(n):
    out, vjp = jax.vjp(lambda q, k, v: causal_attention(q, k, v, mask, "xla", chunks=n), q, k, v)
    return out, vjp(jnp.where(real, out_grad, 0.0))  # gradients of a loss on real rows only
  (whole, whole_grads), (chunked, chunked_grads) = out_and_grads(1), out_and_grads(chunks)
  np.testing.assert_allclose(np.where(real, chunked, 0), np.where(real, whole, 0), rtol=1e-5, atol=1e-6)
  for a, b in zip(chunked_grads, whole_grads):
    # fp32 summation order only: k/v gradients sum ~80 unit-sized terms (40 query rows x 2 heads of
    # a group), so the order alone moves them by ~1e-6 (1.1e-6 seen on an AVX-512 VM); a masking
    # error would move them by ~0.1
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_hf_folder_with_missing_extra_or_misshapen_tensors(hf_dir, tmp_path):
  import shutil

  from safetensors.numpy import load_file, save_file
  tensors = load_file(f"{hf_dir}/model.safetensors")

  def folder(name, mutate):
    d = tmp_path / name
    d.mkdir()
    shutil.copy(f"{hf_dir}/config.json", d / "config.json")
    t = dict(tensors)
    mutate(t)
    save_file(t, str(d / "model.safetensors"), metadata={"format": "pt"})
    return str(d)

  missing = folder("missing", lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
  with pytest.raises(hf.CheckpointError, match="missing tensor model.layers.1.mlp.up_proj.weight"):
    hf.load_pretrained(missing)
  extra = folder("extra", lambda t: t.update({"visual.blocks.9.norm1.weight": np.ones(32, np.float32)}))
  with pytest.raises(hf.CheckpointError, match="unexpected tensor visual.blocks.9.norm1.weight"):
    hf.load_pretrained(extra)
  shaped = folder("shape", lambda t: t.update({"model.norm.weight": np.ones(65, np.float32)}))
  with pytest.raises(hf.CheckpointError, match=r"model.norm.weight: shape \(65,\)"):
    hf.load_pretrained(shaped)


@pytest.mark.parametrize("bias", [True, False])
def test_linear_split_equals_splitting_the_output(bias):
  """Linear.split (one matmul per column slice; the vision q/k/v) gives jnp.split of the fused
  output, values and gradients; a split that does not divide the features is refused."""
  from rewatch_jax.models.layers import Linear
  lin = Linear(8, 12, ("embed", "heads"), bias=bias, dtype="float32", param_dtype="float32", rngs=nnx.Rngs(0))
  if bias:
    lin.bias[...] = jax.random.normal(jax.random.key(1), (12,))
  x = jax.random.normal(jax.random.key(2), (2, 5, 8))
  weights = jax.random.normal(jax.random.key(3), (3, 2, 5, 4))
  def loss(lin, x, fused):
    parts = jnp.split(lin(x), 3, -1) if fused else lin.split(x, 3)
    return sum(jnp.sum(w * p) for w, p in zip(weights, parts))
  for a, b in zip(jnp.split(lin(x), 3, -1), lin.split(x, 3)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
  ga, gb = (nnx.grad(loss, argnums=(0, 1))(lin, x, fused) for fused in (True, False))
  for a, b in zip(jax.tree.leaves(ga), jax.tree.leaves(gb)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="12 output features into 5"):
    lin.split(x, 5)


def test_padded_mlps_compute_the_same_model(hf_dir, model):
  """pad_mlp_to (MLP widths zero-padded at compute time, for GPU matmul kernels) changes neither
  the logits nor any gradient, and leaves the parameters' shapes alone (checkpoints, HF export)."""
  padded = hf.load_pretrained(hf_dir, pad_mlp_to=48)  # tiny: text 128 -> 144, vision 64 -> 96
  assert (padded.text.layers[0].mlp.pad, padded.visual.blocks[0].mlp.pad) == (16, 32)
  assert padded.visual.blocks[0].mlp.down.kernel[...].shape == model.visual.blocks[0].mlp.down.kernel[...].shape
  batch = make_batch(model.config, [[3, ("video", (2, 8, 8), 1.0), 4]], seed=3)
  inputs = jax.tree.map(jnp.asarray, from_hf_inputs(model.config, **batch))
  def logits_and_grad(m):
    graphdef, state = nnx.split(m)
    def loss(s):
      logits = nnx.merge(graphdef, s)(inputs)
      return jnp.mean(jnp.sin(logits)), logits
    return jax.jit(jax.grad(loss, has_aux=True))(state)
  (grad_p, logits_p), (grad_m, logits_m) = logits_and_grad(padded), logits_and_grad(model)
  np.testing.assert_allclose(np.asarray(logits_p), np.asarray(logits_m), atol=2e-6)
  for a, b in zip(jax.tree.leaves(grad_p), jax.tree.leaves(grad_m)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-8)
  with pytest.raises(ConfigError, match="pad_mlp_to must be >= 1"):
    model.config.replace(pad_mlp_to=0).validate()


def test_lm_head_backward_runs_in_the_compute_dtype():
  """dense_fp32_out: fp32 logits, and a backward whose rule is autodiff's (checked in fp32) but,
  in bf16, matmuls bf16 operands only (autodiff's multiplies the fp32 cotangent: tf32 on a GPU)."""
  from rewatch_jax.models.layers import _dense_fp32_out, dense, dense_fp32_out
  x = jax.random.normal(jax.random.key(0), (2, 5, 16))
  w = jax.random.normal(jax.random.key(1), (16, 40))
  loss = lambda f: lambda x, w: jnp.sum(jnp.sin(f(x, w)))
  plain = lambda x, w: dense(x, w, preferred_element_type=jnp.float32)
  for a, b in zip(jax.grad(loss(_dense_fp32_out), (0, 1))(x, w), jax.grad(loss(plain), (0, 1))(x, w)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-6)
  xb, wb = x.astype(jnp.bfloat16), w.astype(jnp.bfloat16)
  assert dense_fp32_out(xb, wb).dtype == jnp.float32
  grads = jax.grad(loss(dense_fp32_out), (0, 1))(xb, wb)
  assert [g.dtype for g in grads] == [jnp.bfloat16, jnp.bfloat16]
  for g, ref in zip(grads, jax.grad(loss(plain), (0, 1))(xb, wb)):  # against autodiff's, bf16 too
    assert np.linalg.norm(np.asarray(g, np.float32) - ref) < 0.02 * np.linalg.norm(np.asarray(ref, np.float32))
  dots = lambda f: [line for line in jax.jit(jax.grad(loss(f), (0, 1))).lower(xb, wb).as_text().splitlines()
                    if "dot_general" in line]
  assert len(dots(dense_fp32_out)) == 3 and not any("xf32>" in line.split("->")[0].split(":")[-1]
                                                     for line in dots(dense_fp32_out))
  assert any("xf32>" in line.split("->")[0].split(":")[-1] for line in dots(plain))  # what it replaces


@pytest.mark.parametrize("block", [4, 16, 64])
def test_block_attention_equals_dense_masked_attention(block):
  from rewatch_jax.models.layers import attention, block_attention
  rng = np.random.default_rng(block)
  nb = 6
  # each block: one segment of random length, then padding (-1), as the host lays windows out
  lengths = rng.integers(1, block + 1, (2, nb))
  seg = np.full((2, nb, block), -1)
  for i, j in np.ndindex(2, nb):
    seg[i, j, :lengths[i, j]] = j
  seg = seg.reshape(2, nb * block)
  q, k, v = (jnp.asarray(rng.standard_normal((2, nb * block, 4, 8)), jnp.float32) for _ in range(3))
  dense = attention(q, k, v, jnp.asarray(seg[:, :, None] == seg[:, None, :]))
  local = block_attention(q, k, v, jnp.asarray(seg), block)
  real = seg >= 0  # padding rows only ever see padding; their output is unused
  np.testing.assert_allclose(np.asarray(local)[real], np.asarray(dense)[real], atol=1e-6)
  with pytest.raises(ValueError, match="multiple of the attention block"):
    block_attention(q[:, 1:], k[:, 1:], v[:, 1:], jnp.asarray(seg[:, 1:]), block)
