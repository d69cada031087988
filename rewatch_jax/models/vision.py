"""Qwen2.5-VL vision tower: 3D patch embedding, 2D rotary, window/full attention blocks, 2x2 merger.

Inputs arrive already in window order with segment ids (positions.vision_layout), so window and
full attention are the same masked attention with different segment ids: no per-window loop, no
reordering inside jit, one program per padded patch count.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from rewatch_jax.models.configs import ModelConfig
from rewatch_jax.models.inputs import normalize_rows
from rewatch_jax.models.layers import Linear, RMSNorm, SwiGLU, block_attention, remat, rotate
from rewatch_jax.models.sharding import constrain


def vision_rotary(rotary_ids: jax.Array, head_dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
  """2D rotary: the first half of each head rotates with the row, the second with the column."""
  quarter = head_dim // 4
  inv_freq = 1.0 / theta ** (jnp.arange(0, 2 * quarter, 2, dtype=jnp.float32) / (2 * quarter))
  freqs = rotary_ids.astype(jnp.float32)[..., None] * inv_freq  # (B, P, 2, head_dim/4)
  freqs = freqs.reshape(*freqs.shape[:-2], 2 * quarter)
  emb = jnp.concatenate([freqs, freqs], axis=-1)
  return jnp.cos(emb), jnp.sin(emb)


class VisionAttention(nnx.Module):
  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    v = cfg.vision
    kw = dict(bias=True, dtype=cfg.dtype, param_dtype=cfg.param_dtype, rngs=rngs)
    self.qkv = Linear(v.hidden_size, 3 * v.hidden_size, ("embed", "heads"), **kw)
    self.proj = Linear(v.hidden_size, v.hidden_size, ("heads", "embed"), **kw)
    self.num_heads = v.num_heads

  def __call__(self, x, cos, sin, segment, block):
    b, p, _ = x.shape
    q, k, v = (y.reshape(b, p, self.num_heads, -1) for y in self.qkv.split(x, 3))
    q, k = rotate(q, cos, sin), rotate(k, cos, sin)
    return self.proj(block_attention(q, k, v, segment, block).reshape(b, p, -1))


class VisionBlock(nnx.Module):
  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    v = cfg.vision
    self.norm1 = RMSNorm(v.hidden_size, v.rms_norm_eps, cfg.param_dtype)
    self.norm2 = RMSNorm(v.hidden_size, v.rms_norm_eps, cfg.param_dtype)
    self.attn = VisionAttention(cfg, rngs)
    self.mlp = SwiGLU(v.hidden_size, v.intermediate_size, bias=True, dtype=cfg.dtype,
                      param_dtype=cfg.param_dtype, rngs=rngs, pad_to=cfg.pad_mlp_to)

  def __call__(self, x, cos, sin, segment, block):
    x = x + self.attn(self.norm1(x), cos, sin, segment, block)
    x = x + self.mlp(self.norm2(x))
    return constrain(x, ("batch", "patch", "embed"))


class PatchMerger(nnx.Module):
  """RMSNorm, then each 2x2 block of patches (adjacent rows) -> MLP -> one text-width token."""

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    v = cfg.vision
    width = v.hidden_size * v.merge_unit
    kw = dict(bias=True, dtype=cfg.dtype, param_dtype=cfg.param_dtype, rngs=rngs)
    self.ln_q = RMSNorm(v.hidden_size, v.rms_norm_eps, cfg.param_dtype)
    self.fc1 = Linear(width, width, ("mlp", "mlp"), **kw)
    self.fc2 = Linear(width, v.out_hidden_size, ("mlp", "embed"), **kw)
    self.width = width

  def __call__(self, x):
    b, p, _ = x.shape
    x = self.ln_q(x).reshape(b, p * x.shape[-1] // self.width, self.width)
    return self.fc2(jax.nn.gelu(self.fc1(x), approximate=False))


class VisionTransformer(nnx.Module):
  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    v = cfg.vision
    self.patch_embed = Linear(v.patch_dim, v.hidden_size, ("patch", "embed"), bias=False,
                              dtype=cfg.dtype, param_dtype=cfg.param_dtype, rngs=rngs)
    self.blocks = nnx.List([VisionBlock(cfg, rngs) for _ in range(v.depth)])
    self.merger = PatchMerger(cfg, rngs)
    self.full_blocks = frozenset(v.fullatt_block_indexes)
    self.head_dim, self.theta, self.remat = v.head_dim, v.rope_theta, cfg.remat
    self.window_block = v.window_merged**2 * v.merge_unit

  def __call__(self, pixel_values, rotary_ids, window_segment, frame_segment, frame_block):
    """(B, P, patch_dim) window-ordered patches -> (B, P / merge_unit, text hidden) tokens.

    `frame_block` (static) is the slot count of one temporal patch (ModelInputs.frame_block);
    full-attention blocks attend within it, window blocks within `window_block` slots."""
    if pixel_values.dtype == jnp.uint8:  # raw rows from the data pipeline: normalised here
      pixel_values = normalize_rows(pixel_values)
    x = self.patch_embed(pixel_values)
    cos, sin = vision_rotary(rotary_ids, self.head_dim, self.theta)
    block_call = remat(lambda blk, *a: blk(*a), self.remat, static_argnums=(5,))
    for i, blk in enumerate(self.blocks):
      if i in self.full_blocks:
        x = block_call(blk, x, cos, sin, frame_segment, frame_block)
      else:
        x = block_call(blk, x, cos, sin, window_segment, self.window_block)
    return self.merger(x)
