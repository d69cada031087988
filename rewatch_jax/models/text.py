"""Qwen2 decoder with multimodal rotary embedding (M-RoPE) and a fixed-size KV cache."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct

from rewatch_jax.models.configs import ModelConfig
from rewatch_jax.models.layers import (
  Linear,
  RMSNorm,
  SwiGLU,
  attention,
  causal_attention,
  dense_fp32_out,
  param,
  remat,
  rotate,
)
from rewatch_jax.models.sharding import constrain


def mrope(positions: jax.Array, head_dim: int, theta: float, section) -> tuple[jax.Array, jax.Array]:
  """cos/sin (B, T, head_dim) from (3, B, T) ids: frequency j uses the temporal, height or width id
  according to which of the `section` = (t, h, w) chunks of the head_dim/2 frequencies it is in."""
  inv_freq = 1.0 / theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim)
  freqs = positions.astype(jnp.float32)[..., None] * inv_freq  # (3, B, T, head_dim/2)
  axis_of_freq = np.repeat(np.arange(3), section)
  freqs = jnp.sum(freqs * jax.nn.one_hot(axis_of_freq, 3, axis=0)[:, None, None, :], axis=0)
  emb = jnp.concatenate([freqs, freqs], axis=-1)
  return jnp.cos(emb), jnp.sin(emb)


@struct.dataclass
class KVCache:
  """Keys/values for every layer in fixed slots. `valid` marks slots holding real tokens (left
  padding stays invalid); `index` is the next slot to write, shared by the whole batch."""
  k: jax.Array  # (layers, B, S, KVH, D)
  v: jax.Array
  valid: jax.Array  # (B, S) bool
  index: jax.Array  # () int32

  @classmethod
  def create(cls, cfg: ModelConfig, batch: int, max_len: int, dtype=None) -> KVCache:
    t = cfg.text
    shape = (t.num_hidden_layers, batch, max_len, t.num_key_value_heads, t.head_dim)
    dtype = dtype or cfg.dtype
    return cls(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype), jnp.zeros((batch, max_len), bool),
               jnp.zeros((), jnp.int32))


class Attention(nnx.Module):
  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    t = cfg.text
    kw = dict(dtype=cfg.dtype, param_dtype=cfg.param_dtype, rngs=rngs)
    kv = t.num_key_value_heads * t.head_dim
    self.q_proj = Linear(t.hidden_size, t.hidden_size, ("embed", "heads"), bias=True, **kw)
    self.k_proj = Linear(t.hidden_size, kv, ("embed", "kv_heads"), bias=True, **kw)
    self.v_proj = Linear(t.hidden_size, kv, ("embed", "kv_heads"), bias=True, **kw)
    self.o_proj = Linear(t.hidden_size, t.hidden_size, ("heads", "embed"), bias=False, **kw)
    self.heads, self.kv_heads, self.head_dim = t.num_attention_heads, t.num_key_value_heads, t.head_dim
    self.impl = cfg.attention

  def __call__(self, x, cos, sin, mask, kv=None):
    """mask: (B, T, S). kv: None, or (k_cache, v_cache, index) for layer-local cache slots."""
    b, n, _ = x.shape
    q = rotate(self.q_proj(x).reshape(b, n, self.heads, self.head_dim), cos, sin)
    k = rotate(self.k_proj(x).reshape(b, n, self.kv_heads, self.head_dim), cos, sin)
    v = self.v_proj(x).reshape(b, n, self.kv_heads, self.head_dim)
    if kv is not None:
      k_cache, v_cache, index = kv
      k = jax.lax.dynamic_update_slice_in_dim(k_cache, k.astype(k_cache.dtype), index, axis=1)
      v = jax.lax.dynamic_update_slice_in_dim(v_cache, v.astype(v_cache.dtype), index, axis=1)
    if kv is None:
      out = causal_attention(q, k, v, mask, self.impl)
    else:
      out = attention(q, k.astype(q.dtype), v.astype(q.dtype), mask)
    return self.o_proj(out.reshape(b, n, -1)), (k, v)


class DecoderLayer(nnx.Module):
  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    t = cfg.text
    self.input_layernorm = RMSNorm(t.hidden_size, t.rms_norm_eps, cfg.param_dtype)
    self.self_attn = Attention(cfg, rngs)
    self.post_attention_layernorm = RMSNorm(t.hidden_size, t.rms_norm_eps, cfg.param_dtype)
    self.mlp = SwiGLU(t.hidden_size, t.intermediate_size, bias=False, dtype=cfg.dtype,
                      param_dtype=cfg.param_dtype, rngs=rngs, pad_to=cfg.pad_mlp_to)

  def __call__(self, x, cos, sin, mask, kv=None):
    h, new_kv = self.self_attn(self.input_layernorm(x), cos, sin, mask, kv)
    x = x + h
    x = x + self.mlp(self.post_attention_layernorm(x))
    return constrain(x, ("batch", "length", "embed")), new_kv


class TextModel(nnx.Module):
  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    t = cfg.text
    self.embed_tokens = param(rngs, (t.vocab_size, t.hidden_size), ("vocab", "embed"), cfg.param_dtype)
    self.layers = nnx.List([DecoderLayer(cfg, rngs) for _ in range(t.num_hidden_layers)])
    self.norm = RMSNorm(t.hidden_size, t.rms_norm_eps, cfg.param_dtype)
    self.lm_head = None if t.tie_word_embeddings else param(
        rngs, (t.hidden_size, t.vocab_size), ("embed", "vocab"), cfg.param_dtype)
    self.head_dim, self.theta, self.section = t.head_dim, t.rope_theta, tuple(t.mrope_section)
    self.dtype, self.remat = cfg.dtype, cfg.remat

  def embed(self, input_ids: jax.Array) -> jax.Array:
    return jnp.take(self.embed_tokens[...], input_ids, axis=0).astype(self.dtype)

  def __call__(self, x, positions, attention_mask, cache: KVCache | None = None):
    """x: (B, T, D) input embeddings; positions: (3, B, T); attention_mask: (B, T) real tokens.

    Without a cache, attention is causal over the T tokens. With a cache, the T tokens are written
    to slots [index, index + T) and attend causally to every valid slot. Returns the final hidden
    states (B, T, D) and the updated cache (or None).
    """
    cos, sin = mrope(positions, self.head_dim, self.theta, self.section)
    n = x.shape[1]
    attention_mask = attention_mask.astype(bool)
    if cache is None:
      slot = jnp.arange(n)
      valid = attention_mask
      q_slot = slot
    else:
      valid = jax.lax.dynamic_update_slice_in_dim(cache.valid, attention_mask, cache.index, axis=1)
      slot = jnp.arange(valid.shape[1])
      q_slot = cache.index + jnp.arange(n)
    mask = valid[:, None, :] & (slot[None, None, :] <= q_slot[None, :, None])
    # (generation, with a cache, has no backward pass to save memory for; and nnx.remat of a layer
    # inside the decode loop's trace fails)
    layer_call = remat(lambda layer, *a: layer(*a), self.remat if cache is None else "none")
    ks, vs = [], []
    for i, layer in enumerate(self.layers):
      kv = None if cache is None else (cache.k[i], cache.v[i], cache.index)
      x, (k, v) = layer_call(layer, x, cos, sin, mask, kv)
      ks.append(k)
      vs.append(v)
    x = self.norm(x)
    if cache is not None:
      cache = KVCache(jnp.stack(ks), jnp.stack(vs), valid, cache.index + n)
    return x, cache

  def logits(self, hidden: jax.Array) -> jax.Array:
    """fp32 logits; the matmul runs in the compute dtype with fp32 accumulation (its backward in
    the compute dtype: layers.dense_fp32_out)."""
    w = self.embed_tokens[...].T if self.lm_head is None else self.lm_head[...]
    return dense_fp32_out(hidden.astype(self.dtype), w.astype(self.dtype))
