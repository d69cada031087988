"""Building blocks shared by the vision tower and the language model."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

_INIT = nnx.initializers.normal(0.02)
_NEG = -0.7 * float(jnp.finfo(jnp.float32).max)  # finite: fully masked rows give a uniform, not NaN


def param(rngs: nnx.Rngs | None, shape, axes, dtype, init=_INIT) -> nnx.Param:
  """A parameter with logical axis names (see sharding.py). rngs=None builds ones (norm scales)."""
  value = jnp.ones(shape, dtype) if rngs is None else init(rngs.params(), shape, dtype)
  return nnx.Param(value, logical_axes=tuple(axes))


class Linear(nnx.Module):
  """y = x @ kernel (+ bias); kernel is (in, out) -- the transpose of torch's weight."""

  def __init__(self, din: int, dout: int, axes: tuple[str, str], *, bias: bool, dtype: str,
               param_dtype: str, rngs: nnx.Rngs):
    self.kernel = param(rngs, (din, dout), axes, param_dtype)
    self.bias = nnx.Param(jnp.zeros((dout,), param_dtype), logical_axes=(axes[1],)) if bias else None
    self.dtype = dtype

  def __call__(self, x: jax.Array) -> jax.Array:
    y = jnp.dot(x.astype(self.dtype), self.kernel[...].astype(self.dtype))
    if self.bias is not None:
      y = y + self.bias[...].astype(self.dtype)
    return y


class RMSNorm(nnx.Module):
  """Qwen2 RMSNorm: normalise in fp32, cast back to the input dtype, then scale."""

  def __init__(self, dim: int, eps: float, param_dtype: str):
    self.scale = param(None, (dim,), ("embed",), param_dtype)
    self.eps = eps

  def __call__(self, x: jax.Array) -> jax.Array:
    xf = x.astype(jnp.float32)
    xf = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps)
    return self.scale[...] * xf.astype(x.dtype)


class SwiGLU(nnx.Module):
  def __init__(self, dim: int, hidden: int, *, bias: bool, dtype: str, param_dtype: str, rngs):
    kw = dict(bias=bias, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.gate = Linear(dim, hidden, ("embed", "mlp"), **kw)
    self.up = Linear(dim, hidden, ("embed", "mlp"), **kw)
    self.down = Linear(hidden, dim, ("mlp", "embed"), **kw)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.down(jax.nn.silu(self.gate(x)) * self.up(x))


def rotate(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
  """Rotary embedding, rotate-half convention, computed in fp32. x: (..., T, H, D), cos: (..., T, D)."""
  xf = x.astype(jnp.float32)
  half = x.shape[-1] // 2
  rotated = jnp.concatenate([-xf[..., half:], xf[..., :half]], axis=-1)
  return (xf * cos[..., None, :] + rotated * sin[..., None, :]).astype(x.dtype)


def attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
  """Softmax attention with grouped KV heads; logits and softmax in fp32.

  q: (B, T, H, D); k, v: (B, S, KVH, D); mask: (B, T, S) bool. Returns (B, T, H, D).
  """
  b, t, h, d = q.shape
  kvh = k.shape[2]
  q = q.reshape(b, t, kvh, h // kvh, d)
  logits = jnp.einsum("btkgd,bskd->bkgts", q, k, preferred_element_type=jnp.float32) * d**-0.5
  logits = jnp.where(mask[:, None, None], logits, _NEG)
  probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
  out = jnp.einsum("bkgts,bskd->btkgd", probs, v)
  return out.reshape(b, t, h, d)


def causal_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, impl: str | None) -> jax.Array:
  """Causal self-attention over right-padded rows. "xla": `attention` with the exact mask;
  otherwise `jax.nn.dot_product_attention(implementation=impl)` ("cudnn": the fused flash kernel),
  causal only, which gives the same result on every real token (a real token's causal window holds
  no padding) and ignores `mask`."""
  if impl == "xla":
    return attention(q, k, v, mask)
  if impl == "cudnn" and jax.default_backend() != "gpu":
    raise ValueError(f"attention='cudnn' needs an NVIDIA GPU, but JAX runs on {jax.default_backend()!r}: "
                     "use --config.model.attention=xla")
  return jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation=impl)


def block_attention(q: jax.Array, k: jax.Array, v: jax.Array, segment: jax.Array,
                    block: int) -> jax.Array:
  """Block-diagonal bidirectional attention: rows attend within their block of `block` (static)
  rows, to keys of the same segment id. The host lays windows and frames out so that each block
  holds exactly one window (or one frame pair) plus padding, which makes this exact.

  q, k, v: (B, P, H, D) with P a multiple of `block`; segment: (B, P). Cost O(P * block).
  """
  b, p, h, d = q.shape
  if p % block:
    raise ValueError(f"{p} patch slots are not a multiple of the attention block {block}")
  blocks = lambda x: x.reshape(b * (p // block), block, *x.shape[2:])
  seg = blocks(segment)
  out = attention(blocks(q), blocks(k), blocks(v), seg[:, :, None] == seg[:, None, :])
  return out.reshape(b, p, h, d)


def remat(fn, policy: str, static_argnums: tuple[int, ...] = ()):
  """Rematerialise a block call: 'none', 'full' (recompute all) or 'dots' (keep matmul outputs)."""
  if policy == "none":
    return fn
  saveable = jax.checkpoint_policies.dots_with_no_batch_dims_saveable if policy == "dots" else None
  return nnx.remat(fn, policy=saveable, static_argnums=static_argnums)
