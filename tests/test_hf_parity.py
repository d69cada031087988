"""Our Qwen2.5-VL against Hugging Face's, offline: random tiny torch model -> save_pretrained ->
our loader -> logits at 1e-4; our exporter -> transformers from_pretrained -> logits at 1e-5."""

import numpy as np
import pytest

from rewatch_jax import hf
from rewatch_jax.models import forward_hf_inputs, from_hf_inputs
from tests.hf_reference import build_hf_model, hf_logits, make_batch, tiny_config, torch, transformers

CASES = {
    "text": [[13], [9]],
    "image": [[3, ("image", (1, 10, 12)), 5]],  # 5x6 merged: partial windows at the border
    "video": [[4, ("video", (3, 6, 8), 1.0), 6]],
    "video_spg_1.5": [[2, ("video", (4, 4, 8), 1.5), 3]],
    "video_spg_0.25": [[2, ("video", (4, 6, 4), 0.25), 3]],
    "mixed_batch": [
        [2, ("image", (1, 8, 8)), 4, ("video", (2, 4, 6), 0.5), 3],
        [5, ("video", (3, 6, 6), 2.0), 2],
        [4],
        [1, ("image", (1, 4, 4)), ("image", (1, 6, 4)), 2],
    ],
}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
  cfg = tiny_config()
  ref = build_hf_model(cfg)
  path = tmp_path_factory.mktemp("hf_tiny")
  ref.save_pretrained(path)
  return ref, hf.load_pretrained(str(path)), path


def _ours_and_ref(models, case):
  ref, ours, _ = models
  batch = make_batch(ours.config, CASES[case], seed=len(case))
  prepared = from_hf_inputs(ours.config, **batch)
  # Feed HF our M-RoPE ids: transformers >= 5.3 restarts text ids after a video differently from
  # Qwen's original code (see test_positions.py); the network itself must match exactly.
  expected = hf_logits(ref, batch, position_ids=prepared.positions)
  return forward_hf_inputs(ours, **batch), expected, batch["attention_mask"].astype(bool)


@pytest.mark.parametrize("case", sorted(CASES))
def test_logits_match_hf(models, case):
  got, expected, real = _ours_and_ref(models, case)
  assert got.shape == expected.shape
  diff = np.abs(got - expected)[real]
  assert diff.max() <= 1e-4, f"max abs diff {diff.max():.3g}"


def test_hf_positions_used_when_they_agree(models):
  """Where Qwen's original and transformers 5.x position ids agree (images; videos whose temporal
  extent does not exceed the spatial one), HF computing its own ids gives the same logits."""
  ref, ours, _ = models
  batch = make_batch(ours.config, [[3, ("image", (1, 10, 12)), 5], [2, ("video", (2, 8, 8), 1.0), 4]])
  got = forward_hf_inputs(ours, **batch)
  diff = np.abs(got - hf_logits(ref, batch))[batch["attention_mask"].astype(bool)]
  assert diff.max() <= 1e-4


def test_export_reload_in_transformers(models, tmp_path):
  ref, ours, _ = models
  hf.save_pretrained(ours, str(tmp_path), max_shard_bytes=200_000)  # force several shards
  assert len(list(tmp_path.glob("*.safetensors"))) > 1
  reloaded = transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(
      tmp_path, dtype=torch.float32).eval()
  batch = make_batch(ours.config, CASES["mixed_batch"], seed=3)
  positions = from_hf_inputs(ours.config, **batch).positions
  a, b = hf_logits(reloaded, batch, positions), hf_logits(ref, batch, positions)
  assert np.abs(a - b)[batch["attention_mask"].astype(bool)].max() <= 1e-5
  # and our loader reads our own export back bit-exactly
  again = hf.load_pretrained(str(tmp_path))
  np.testing.assert_array_equal(np.asarray(again.text.layers[0].self_attn.q_proj.kernel[...]),
                                np.asarray(ours.text.layers[0].self_attn.q_proj.kernel[...]))


def test_bf16_checkpoints_load(models, tmp_path):
  """The released Qwen2.5-VL checkpoints store BF16 tensors (safetensors' numpy reader makes them
  only once ml_dtypes, which jax imports, has registered the dtype): a torch bf16 save_pretrained
  loads, into float32 (exactly: the logits of the same bf16-rounded weights in HF at 1e-4) and into
  bfloat16 parameters."""
  import copy
  ref = copy.deepcopy(models[0]).to(torch.bfloat16)
  ref.save_pretrained(tmp_path)
  assert '"BF16"' in next(tmp_path.glob("*.safetensors")).read_bytes()[:100_000].decode("latin-1")
  ours = hf.load_pretrained(str(tmp_path))
  batch = make_batch(ours.config, CASES["mixed_batch"], seed=4)
  real = batch["attention_mask"].astype(bool)
  expected = hf_logits(ref.float(), batch, position_ids=from_hf_inputs(ours.config, **batch).positions)
  assert np.abs(forward_hf_inputs(ours, **batch) - expected)[real].max() <= 1e-4
  half = hf.load_pretrained(str(tmp_path), dtype="bfloat16")
  kernel = half.text.layers[0].self_attn.q_proj.kernel[...]
  assert kernel.dtype == np.dtype("bfloat16")
  np.testing.assert_array_equal(np.asarray(kernel, np.float32), np.asarray(ours.text.layers[0].self_attn.q_proj.kernel[...]))


def test_tied_embeddings_roundtrip(tmp_path):
  cfg = tiny_config()
  cfg = cfg.replace(text=cfg.text.__class__(**{**cfg.text.__dict__, "tie_word_embeddings": True}))
  ref = build_hf_model(cfg, seed=1)
  ref.save_pretrained(tmp_path / "in")
  ours = hf.load_pretrained(str(tmp_path / "in"))
  assert ours.text.lm_head is None
  batch = make_batch(cfg, [[3, ("image", (1, 4, 4)), 4]])
  got = forward_hf_inputs(ours, **batch)
  assert np.abs(got - hf_logits(ref, batch)).max() <= 1e-4
  hf.save_pretrained(ours, str(tmp_path / "out"))
  reloaded = transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(tmp_path / "out").eval()
  assert np.abs(hf_logits(reloaded, batch) - hf_logits(ref, batch)).max() <= 1e-5


def test_gradients_match_hf(models):
  """Training needs the backward pass to match too: d(next-token loss)/d(params) against torch
  autograd, for the vision tower (patch embedding, a window block, a full block, the merger) and
  the language model."""
  import jax
  import jax.numpy as jnp
  from flax import nnx
  ref, ours, _ = models
  batch = make_batch(ours.config, CASES["mixed_batch"], seed=5)
  prepared = from_hf_inputs(ours.config, **batch)
  real = batch["attention_mask"].astype(bool)
  keep = real[:, :-1] & real[:, 1:]
  targets = batch["input_ids"][:, 1:]

  def loss_ours(model):
    logp = jax.nn.log_softmax(model(jax.tree.map(jnp.asarray, prepared))[:, :-1], -1)
    return -jnp.sum(jnp.where(keep, jnp.take_along_axis(logp, targets[..., None], -1)[..., 0], 0)) / keep.sum()

  grads = nnx.grad(loss_ours)(ours)
  ref.zero_grad()
  kw = {k: torch.from_numpy(np.asarray(v)) for k, v in batch.items()}
  logits = ref(**kw, position_ids=torch.from_numpy(np.asarray(prepared.positions, np.int64))).logits[:, :-1]
  logp = torch.log_softmax(logits.float(), -1).gather(-1, torch.from_numpy(targets)[..., None])[..., 0]
  (-(logp * torch.from_numpy(keep)).sum() / keep.sum()).backward()
  named = dict(ref.named_parameters())
  full = ours.config.vision.fullatt_block_indexes[0]
  pairs = {
      "model.visual.merger.mlp.2.bias": grads.visual.merger.fc2.bias,
      "model.visual.merger.mlp.0.weight": grads.visual.merger.fc1.kernel,
      "model.visual.blocks.0.attn.qkv.weight": grads.visual.blocks[0].attn.qkv.kernel,
      f"model.visual.blocks.{full}.mlp.down_proj.weight": grads.visual.blocks[full].mlp.down.kernel,
      "model.language_model.layers.0.self_attn.q_proj.weight": grads.text.layers[0].self_attn.q_proj.kernel,
  }
  for name, ours_grad in pairs.items():
    theirs = named[name].grad.numpy()
    got = np.asarray(ours_grad[...])
    got = got.T if got.ndim == 2 else got
    scale = np.abs(theirs).max()
    assert scale > 0 and np.abs(got - theirs).max() <= 1e-4 * scale, (name, np.abs(got - theirs).max(), scale)
  patch = np.asarray(grads.visual.patch_embed.kernel[...])
  assert np.abs(patch).max() > 0 and np.isfinite(patch).all()
