"""Qwen2.5-VL: the vision tower's tokens replace the image/video placeholders of the text, then the
M-RoPE decoder runs. Mirrors Hugging Face's `Qwen2_5_VLForConditionalGeneration`."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rewatch_jax.models.configs import ModelConfig
from rewatch_jax.models.inputs import ModelInputs, from_hf_inputs
from rewatch_jax.models.text import KVCache, TextModel
from rewatch_jax.models.vision import VisionTransformer


class Qwen25VL(nnx.Module):
  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.config = cfg.validate()
    self.visual = VisionTransformer(cfg, rngs)
    self.text = TextModel(cfg, rngs)

  def input_embeddings(self, inputs: ModelInputs) -> jax.Array:
    """Token embeddings with visual placeholders replaced by the vision tower's merged tokens."""
    x = self.text.embed(inputs.input_ids)
    if inputs.pixel_values.shape[1] == 0:
      return x
    vision = self.visual(inputs.pixel_values, inputs.vision_rotary_ids,
                         inputs.window_segment, inputs.frame_segment,
                         inputs.frame_block).astype(x.dtype)
    index = inputs.vision_token_index
    gathered = jnp.take_along_axis(vision, jnp.maximum(index, 0)[..., None], axis=1)
    return jnp.where((index >= 0)[..., None], gathered, x)

  def __call__(self, inputs: ModelInputs, return_hidden: bool = False) -> jax.Array:
    """Logits (B, L, vocab) in fp32, or the final hidden states."""
    hidden, _ = self.text(self.input_embeddings(inputs), inputs.positions, inputs.attention_mask)
    return hidden if return_hidden else self.text.logits(hidden)

  def prefill(self, inputs: ModelInputs, samples: int, max_new_tokens: int) -> tuple[jax.Array, KVCache]:
    """The prompts' final hidden states (B, L, D) and a cache holding their keys and values once,
    for `samples` samples of up to `max_new_tokens` tokens each (the vision tower runs once a prompt)."""
    hidden, (k, v) = self.text(self.input_embeddings(inputs), inputs.positions, inputs.attention_mask, keep_kv=True)
    return hidden, KVCache.from_prefill(k, v, inputs.attention_mask, samples, max_new_tokens)

  def decode_step(self, tokens: jax.Array, positions: jax.Array, cache: KVCache) -> tuple[jax.Array, KVCache]:
    """One token a sample row: tokens (R,), positions (R,) text ids (the same on all 3 M-RoPE
    axes). Returns fp32 logits (R, vocab) and the cache with the token written."""
    hidden, cache = self.text.decode(self.text.embed(tokens[:, None]), positions, cache)
    return self.text.logits(hidden[:, 0]), cache


@nnx.jit
def _forward(model: Qwen25VL, inputs: ModelInputs) -> jax.Array:
  return model(inputs)


def forward_hf_inputs(model: Qwen25VL, **inputs) -> np.ndarray:
  """Logits (numpy, fp32) from exactly what the HF Qwen2.5-VL processor returns (numpy or torch):
  input_ids, attention_mask, and optionally pixel_values, image_grid_thw, pixel_values_videos,
  video_grid_thw, second_per_grid_ts (mm_token_type_ids is accepted and ignored)."""
  prepared = from_hf_inputs(model.config, **inputs)
  return np.asarray(_forward(model, jax.tree.map(jnp.asarray, prepared)))
