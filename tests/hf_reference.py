"""Random tiny Hugging Face Qwen2.5-VL models and processor-style inputs for parity tests."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is not installed (pip install -e .[test])")
transformers = pytest.importorskip("transformers", reason="transformers is not installed")

from rewatch_jax.models import ModelConfig, get_preset  # noqa: E402


def tiny_config(**overrides) -> ModelConfig:
  return get_preset("tiny", **overrides)


def build_hf_model(cfg: ModelConfig, seed: int = 0):
  """A random HF model of our config (built from our config.json writer: tests that too)."""
  torch.manual_seed(seed)
  hf_cfg = transformers.Qwen2_5_VLConfig(**cfg.to_hf_dict())
  model = transformers.Qwen2_5_VLForConditionalGeneration(hf_cfg).eval()
  with torch.no_grad():  # HF initialises norms to 1 and biases to 0: randomise so they are tested
    for name, p in model.named_parameters():
      if name.endswith("bias") or "norm" in name or "ln_q" in name:
        p.add_(torch.randn_like(p) * 0.1)
  return model


def make_batch(cfg: ModelConfig, examples, seed: int = 0, pad_to: int | None = None):
  """HF-processor-style inputs. `examples` is a list of lists of segments: an int n (n random
  text tokens), ("image", (t, h, w)) or ("video", (t, h, w), second_per_grid). Left-padded."""
  rng = np.random.default_rng(seed)
  m = cfg.vision.merge_unit
  seqs, images, videos, igrid, vgrid, spg = [], [], [], [], [], []
  for segments in examples:
    ids = []
    for seg in segments:
      if isinstance(seg, int):
        ids += list(rng.integers(0, 400, seg))
        continue
      kind, grid = seg[0], seg[1]
      n = int(np.prod(grid))
      rows = rng.standard_normal((n, cfg.vision.patch_dim)).astype(np.float32)
      token = cfg.image_token_id if kind == "image" else cfg.video_token_id
      ids += [cfg.vision_start_token_id] + [token] * (n // m) + [cfg.vision_end_token_id]
      if kind == "image":
        images.append(rows)
        igrid.append(grid)
      else:
        videos.append(rows)
        vgrid.append(grid)
        spg.append(seg[2])
    seqs.append(ids)
  length = max(pad_to or 0, max(len(s) for s in seqs))
  input_ids = np.zeros((len(seqs), length), np.int64)
  mask = np.zeros((len(seqs), length), np.int64)
  for i, s in enumerate(seqs):
    input_ids[i, length - len(s):] = s
    mask[i, length - len(s):] = 1
  out = dict(input_ids=input_ids, attention_mask=mask)
  if images:
    out.update(pixel_values=np.concatenate(images), image_grid_thw=np.array(igrid))
  if videos:
    out.update(pixel_values_videos=np.concatenate(videos), video_grid_thw=np.array(vgrid),
               second_per_grid_ts=np.array(spg, np.float32))
  return out


def hf_logits(model, batch, position_ids=None) -> np.ndarray:
  kw = {k: torch.from_numpy(np.asarray(v)) for k, v in batch.items()}
  if position_ids is not None:
    kw["position_ids"] = torch.from_numpy(np.asarray(position_ids, np.int64))
  else:
    types = np.zeros_like(batch["input_ids"])
    model_cfg = model.config
    types[batch["input_ids"] == model_cfg.image_token_id] = 1
    types[batch["input_ids"] == model_cfg.video_token_id] = 2
    kw["mm_token_type_ids"] = torch.from_numpy(types)
  with torch.no_grad():
    return model(**kw).logits.float().numpy()
