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
  causal_attention,
  decode_attention,
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
  """Keys and values for generation, in fixed slots: a prompt's (`prefix_*`, one row per prompt,
  written once by the prefill and shared by all the prompt's samples) and those of the tokens each
  sample generates after it (one row per sample, a prompt's samples consecutive). One array a
  layer, heads before slots (the layout attention reads): a step writes its slot of each in place
  and slices or transposes nothing (a stacked (layers, ...) array cost a copy of every layer's
  slice a step). `index`: the next generated slot, shared by every row."""
  prefix_k: tuple[jax.Array, ...]  # a layer's: (B, KVH, L, D)
  prefix_v: tuple[jax.Array, ...]
  prefix_valid: jax.Array  # (B, L) bool: real prompt tokens (padding stays invalid)
  k: tuple[jax.Array, ...]  # a layer's: (B x samples, KVH, D, N), transposed (layers.decode_attention)
  v: tuple[jax.Array, ...]  # a layer's: (B x samples, KVH, N, D)
  index: jax.Array  # () int32

  @classmethod
  def from_prefill(cls, prefix_k, prefix_v, prefix_valid: jax.Array, samples: int, max_new_tokens: int) -> KVCache:
    b, kvh, _, d = prefix_k[0].shape
    empty = lambda shape, names: constrain(jnp.zeros((b * samples, kvh, *shape), prefix_k[0].dtype), names)
    keys = tuple(empty((d, max_new_tokens), ("batch", "kv_heads", "head_dim", "length")) for _ in prefix_k)
    values = tuple(empty((max_new_tokens, d), ("batch", "kv_heads", "length", "head_dim")) for _ in prefix_k)
    return cls(tuple(prefix_k), tuple(prefix_v), prefix_valid.astype(bool), keys, values, jnp.zeros((), jnp.int32))

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

  def __call__(self, x, cos, sin, mask):
    """Causal self-attention over x's tokens (mask: (B, T, T)); returns the output and this
    layer's keys and values (B, T, KVH, D), which a prefill keeps."""
    b, n, _ = x.shape
    q, k, v = self._qkv(x, cos, sin)
    out = causal_attention(q, k, v, mask, self.impl)
    return self.o_proj(out.reshape(b, n, -1)), (k, v)

  def decode(self, x, cos, sin, layer: int, cache: KVCache):
    """One new token a row (x: (R, 1, E)): its keys and values go to slot `cache.index` of this
    layer's generated slots, and it attends to its prompt's and its own. Returns (output, cache)."""
    r = x.shape[0]
    q, k, v = self._qkv(x, cos, sin)
    ks = jax.lax.dynamic_update_slice(cache.k[layer], k.transpose(0, 2, 3, 1).astype(cache.k[layer].dtype),
                                      (0, 0, 0, cache.index))
    vs = jax.lax.dynamic_update_slice(cache.v[layer], v.transpose(0, 2, 1, 3).astype(cache.v[layer].dtype),
                                      (0, 0, cache.index, 0))
    written = jnp.arange(vs.shape[2]) <= cache.index
    out = decode_attention(q[:, 0], cache.prefix_k[layer].astype(q.dtype), cache.prefix_v[layer].astype(q.dtype),
                           cache.prefix_valid, ks.astype(q.dtype), vs.astype(q.dtype), written)
    replace = lambda t, new: t[:layer] + (new,) + t[layer + 1:]
    return self.o_proj(out.reshape(r, 1, -1)), cache.replace(k=replace(cache.k, ks), v=replace(cache.v, vs))

  def _qkv(self, x, cos, sin):
    b, n, _ = x.shape
    q = rotate(self.q_proj(x).reshape(b, n, self.heads, self.head_dim), cos, sin)
    k = rotate(self.k_proj(x).reshape(b, n, self.kv_heads, self.head_dim), cos, sin)
    return q, k, self.v_proj(x).reshape(b, n, self.kv_heads, self.head_dim)


class DecoderLayer(nnx.Module):
  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    t = cfg.text
    self.input_layernorm = RMSNorm(t.hidden_size, t.rms_norm_eps, cfg.param_dtype)
    self.self_attn = Attention(cfg, rngs)
    self.post_attention_layernorm = RMSNorm(t.hidden_size, t.rms_norm_eps, cfg.param_dtype)
    self.mlp = SwiGLU(t.hidden_size, t.intermediate_size, bias=False, dtype=cfg.dtype,
                      param_dtype=cfg.param_dtype, rngs=rngs, pad_to=cfg.pad_mlp_to)

  def __call__(self, x, cos, sin, mask):
    h, kv = self.self_attn(self.input_layernorm(x), cos, sin, mask)
    return self._mlp(x + h), kv

  def decode(self, x, cos, sin, layer: int, cache: KVCache):
    h, cache = self.self_attn.decode(self.input_layernorm(x), cos, sin, layer, cache)
    return self._mlp(x + h), cache

  def _mlp(self, x):
    x = x + self.mlp(self.post_attention_layernorm(x))
    return constrain(x, ("batch", "length", "embed"))


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

  def __call__(self, x, positions, attention_mask, keep_kv: bool = False):
    """x: (B, T, D) input embeddings; positions: (3, B, T); attention_mask: (B, T) real tokens.
    Causal attention over the T tokens. Returns the final hidden states (B, T, D) and, with
    `keep_kv` (a prefill), every layer's keys and values (tuples of (B, KVH, T, D) arrays), else None.
    """
    cos, sin = mrope(positions, self.head_dim, self.theta, self.section)
    n = x.shape[1]
    slot = jnp.arange(n)
    mask = attention_mask.astype(bool)[:, None, :] & (slot[None, None, :] <= slot[None, :, None])
    # (a prefill has no backward pass to save memory for: no remat)
    layer_call = remat(lambda layer, *a: layer(*a), "none" if keep_kv else self.remat)
    ks, vs = [], []
    for layer in self.layers:
      x, (k, v) = layer_call(layer, x, cos, sin, mask)
      if keep_kv:
        ks.append(k.transpose(0, 2, 1, 3))
        vs.append(v.transpose(0, 2, 1, 3))
    x = self.norm(x)
    if not keep_kv:
      return x, None
    names = ("batch", "kv_heads", "length", "head_dim")
    return x, (tuple(constrain(k, names) for k in ks), tuple(constrain(v, names) for v in vs))

  def decode(self, x, positions, cache: KVCache):
    """One token a row: x (R, 1, D) embeddings, positions (R,) text ids (the same on all three
    M-RoPE axes). Returns the final hidden states (R, 1, D) and the cache with the token written."""
    pos = jnp.broadcast_to(positions[None, :, None], (3, x.shape[0], 1))
    cos, sin = mrope(pos, self.head_dim, self.theta, self.section)
    for i, layer in enumerate(self.layers):
      x, cache = layer.decode(x, cos, sin, i, cache)
    return self.norm(x), cache.replace(index=cache.index + 1)

  def logits(self, hidden: jax.Array) -> jax.Array:
    """fp32 logits; the matmul runs in the compute dtype with fp32 accumulation (its backward in
    the compute dtype: layers.dense_fp32_out)."""
    w = self.embed_tokens[...].T if self.lm_head is None else self.lm_head[...]
    return dense_fp32_out(hidden.astype(self.dtype), w.astype(self.dtype))
