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


def dense(x: jax.Array, kernel: jax.Array, **kw) -> jax.Array:
  """`x @ kernel` over x's last axis, computed as one 2-D matmul on x's rows (leading axes
  flattened). The same numbers, but the kernel's gradient then contracts one axis instead of all
  of x's leading axes, which XLA's CPU backend otherwise computes from two transposed copies and a
  slower matmul: a 4-layer SwiGLU stack's fwd+bwd 1.42x faster, the 75M benchmark's 1.27x
  (benchmarks/RESULTS.md, model_forward.py)."""
  y = jnp.dot(x.reshape(-1, x.shape[-1]), kernel, **kw)
  return y.reshape(*x.shape[:-1], kernel.shape[-1])


def dense_fp32_out(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """`dense` with an fp32 result (the LM head's logits, for an fp32 loss) whose backward runs in
  the operands' dtype: the fp32 cotangent is rounded to it first, as where the logits themselves
  are computed in that dtype (Hugging Face). A bf16 model's LM-head gradients are then two bf16
  matmuls instead of two tf32 ones (7.0 -> 2.4 ms of an H200 step, benchmarks/RESULTS.md). fp32
  operands take plain autodiff (the same numbers; the CPU demo's runs stay bit-identical)."""
  if x.dtype == jnp.float32 and kernel.dtype == jnp.float32:
    return dense(x, kernel, preferred_element_type=jnp.float32)
  return _dense_fp32_out(x, kernel)


@jax.custom_vjp
def _dense_fp32_out(x: jax.Array, kernel: jax.Array) -> jax.Array:
  return dense(x, kernel, preferred_element_type=jnp.float32)


def _dense_fp32_out_fwd(x, kernel):
  return _dense_fp32_out(x, kernel), (x, kernel)


def _dense_fp32_out_bwd(res, g):
  x, kernel = res
  g = g.astype(x.dtype)
  dx = dense(g, kernel.T)
  dk = jnp.dot(x.reshape(-1, x.shape[-1]).T, g.reshape(-1, g.shape[-1]))
  return dx.astype(x.dtype), dk.astype(kernel.dtype)


_dense_fp32_out.defvjp(_dense_fp32_out_fwd, _dense_fp32_out_bwd)


class Linear(nnx.Module):
  """y = x @ kernel (+ bias); kernel is (in, out) -- the transpose of torch's weight."""

  def __init__(self, din: int, dout: int, axes: tuple[str, str], *, bias: bool, dtype: str,
               param_dtype: str, rngs: nnx.Rngs):
    self.kernel = param(rngs, (din, dout), axes, param_dtype)
    self.bias = nnx.Param(jnp.zeros((dout,), param_dtype), logical_axes=(axes[1],)) if bias else None
    self.dtype = dtype

  def __call__(self, x: jax.Array, pad: tuple[int, int] = (0, 0)) -> jax.Array:
    """`pad`: zero rows and columns appended to the kernel (zero bias entries to the columns), so x
    may carry `pad[0]` extra (zero-weighted) features and y gains `pad[1]` zero features."""
    kernel = self.kernel[...].astype(self.dtype)
    if any(pad):
      kernel = jnp.pad(kernel, ((0, pad[0]), (0, pad[1])))
    y = dense(x.astype(self.dtype), kernel)
    if self.bias is not None:
      bias = self.bias[...].astype(self.dtype)
      y = y + (jnp.pad(bias, (0, pad[1])) if pad[1] else bias)
    return y

  def split(self, x: jax.Array, parts: int) -> list[jax.Array]:
    """`jnp.split(self(x), parts, -1)` as one matmul per column slice of the kernel: the same
    numbers, but the backward pass needs no activation-sized concatenate of the parts' gradients
    (the fused vision q/k/v: a few percent on the 2-core CPU benchmark, benchmarks/RESULTS.md)."""
    kernel, x = self.kernel[...].astype(self.dtype), x.astype(self.dtype)
    if kernel.shape[1] % parts:
      raise ValueError(f"cannot split {kernel.shape[1]} output features into {parts} equal parts")
    cols = kernel.shape[1] // parts
    out = [dense(x, kernel[:, i * cols:(i + 1) * cols]) for i in range(parts)]
    if self.bias is not None:
      bias = self.bias[...].astype(self.dtype)
      out = [y + bias[i * cols:(i + 1) * cols] for i, y in enumerate(out)]
    return out


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
  """down(silu(gate(x)) * up(x)). With `pad_to` > 1 the hidden width is computed zero-padded to a
  multiple of it (zero gate/up columns give silu(0) * 0 = 0 units that meet zero down rows: the
  same function and gradients). GPU matmul kernels want aligned widths: the vision tower's 3420
  ran its backward on a slow Ampere-era cuBLAS kernel on an H200 (benchmarks/RESULTS.md)."""

  def __init__(self, dim: int, hidden: int, *, bias: bool, dtype: str, param_dtype: str, rngs,
               pad_to: int = 1):
    kw = dict(bias=bias, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.gate = Linear(dim, hidden, ("embed", "mlp"), **kw)
    self.up = Linear(dim, hidden, ("embed", "mlp"), **kw)
    self.down = Linear(hidden, dim, ("mlp", "embed"), **kw)
    self.pad = -hidden % pad_to

  def __call__(self, x: jax.Array) -> jax.Array:
    p = self.pad
    return self.down(jax.nn.silu(self.gate(x, (0, p))) * self.up(x, (0, p)), (p, 0))


def rotate(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
  """Rotary embedding, rotate-half convention, computed in fp32. x: (..., T, H, D), cos: (..., T, D)."""
  xf = x.astype(jnp.float32)
  half = x.shape[-1] // 2
  rotated = jnp.concatenate([-xf[..., half:], xf[..., :half]], axis=-1)
  return (xf * cos[..., None, :] + rotated * sin[..., None, :]).astype(x.dtype)


def attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
  """Softmax attention with grouped KV heads; logits and softmax in fp32.

  q: (B, T, H, D); k, v: (B, S, KVH, D); mask: (B, T, S) bool, or (B, 1, S) for a key-only mask.
  Returns (B, T, H, D). Heads go in front of the tokens explicitly, and each KV head's group of
  query heads is folded into the rows of one matmul: on CPU, XLA's batched matmuls run ~1.2-2x
  faster in this layout than with the transposes it picks itself from a token-major einsum.
  """
  b, t, h, d = q.shape
  kvh, s = k.shape[2], k.shape[1]
  g = h // kvh
  q = q.reshape(b, t, kvh, g, d).transpose(0, 2, 3, 1, 4).reshape(b, kvh, g * t, d)
  k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # (B, KVH, S, D)
  logits = jnp.einsum("bkqd,bksd->bkqs", q, k, preferred_element_type=jnp.float32) * d**-0.5
  logits = jnp.where(mask[:, None, None], logits.reshape(b, kvh, g, t, s), _NEG)
  probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype).reshape(b, kvh, g * t, s)
  out = jnp.einsum("bkqs,bksd->bkqd", probs, v)
  return out.reshape(b, kvh, g, t, d).transpose(0, 3, 1, 2, 4).reshape(b, t, h, d)


def decode_attention(q: jax.Array, prefix_k: jax.Array, prefix_v: jax.Array, prefix_valid: jax.Array,
                     k: jax.Array, v: jax.Array, valid: jax.Array) -> jax.Array:
  """One new token per sample row, attending to its prompt's keys, which the prompt's samples share
  (read once for all of them), and to the keys its own sample has generated; logits and softmax in
  fp32 over both together.

  q: (R, H, D), R = B x G rows with a prompt's G samples consecutive; prefix_k/v: (B, KVH, L, D);
  prefix_valid: (B, L); k: (R, KVH, D, N), keys transposed (a row's scores are then a plain
  (g x D) @ (D x N) matmul: 6.6x faster on a CPU than against (N, D) keys); v: (R, KVH, N, D);
  valid: (N,) generated slots written. Returns (R, H, D).
  """
  r, h, d = q.shape
  b, kvh, length, _ = prefix_k.shape
  samples, g = r // b, h // kvh
  q = q.reshape(b, samples, kvh, g, d)
  shared = jnp.einsum("bskqd,bkld->bskql", q, prefix_k, preferred_element_type=jnp.float32)
  shared = jnp.where(prefix_valid[:, None, None, None, :], shared * d**-0.5, _NEG)
  own = jnp.einsum("rkqd,rkdn->rkqn", q.reshape(r, kvh, g, d), k, preferred_element_type=jnp.float32)
  own = jnp.where(valid, own * d**-0.5, _NEG).reshape(b, samples, kvh, g, -1)
  probs = jax.nn.softmax(jnp.concatenate([shared, own], axis=-1), axis=-1).astype(v.dtype)
  out = jnp.einsum("bskql,bkld->bskqd", probs[..., :length], prefix_v)
  out += jnp.einsum("rkqn,rknd->rkqd", probs[..., length:].reshape(r, kvh, g, -1), v).reshape(out.shape)
  return out.reshape(r, h, d)


CAUSAL_CHUNKS = 4  # static query chunks of the xla causal path (more: fewer logits, more ops)


def causal_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, impl: str | None,
                     chunks: int = CAUSAL_CHUNKS) -> jax.Array:
  """Causal self-attention over right-padded rows. "xla": `attention` with the exact mask, the
  queries split into `chunks` static slices that each see only the keys up to their last row (the
  rest are causally masked anyway), which skips ~3/8 of the logits and their softmax, forward and
  backward; otherwise `jax.nn.dot_product_attention(implementation=impl)` ("cudnn": the fused
  flash kernel), causal only, which gives the same result on every real token (a real token's
  causal window holds no padding) and ignores `mask`. `mask` must be causal (no key after its
  query); a row with no visible key at all (left padding) gets an output nobody reads."""
  if impl == "xla":
    size = -(-q.shape[1] // chunks)
    outs = [attention(q[:, lo:lo + size], k[:, :lo + size], v[:, :lo + size], mask[:, lo:lo + size, :lo + size])
            for lo in range(0, q.shape[1], size)]
    return outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=1)
  if impl == "cudnn" and jax.default_backend() != "gpu":
    raise ValueError(f"attention='cudnn' needs an NVIDIA GPU, but JAX runs on {jax.default_backend()!r}: "
                     "use --config.model.attention=xla")
  return jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation=impl)


def block_attention(q: jax.Array, k: jax.Array, v: jax.Array, segment: jax.Array,
                    block: int) -> jax.Array:
  """Block-diagonal bidirectional attention: rows attend within their block of `block` (static)
  rows, to its keys that are not padding (segment id -1). The host lays windows and frames out
  so that each block holds exactly one window (or one frame pair) plus padding
  (positions.vision_layout), which makes this exact.

  q, k, v: (B, P, H, D) with P a multiple of `block`; segment: (B, P). Cost O(P * block).
  """
  b, p, h, d = q.shape
  if p % block:
    raise ValueError(f"{p} patch slots are not a multiple of the attention block {block}")
  blocks = lambda x: x.reshape(b * (p // block), block, *x.shape[2:])
  # One segment per block: a key mask (not the (block, block) segment-equality matrix) is exact on
  # every real row; padding rows attend to the block's real keys, and nothing reads them.
  real_keys = (blocks(segment) >= 0)[:, None, :]
  return attention(blocks(q), blocks(k), blocks(v), real_keys).reshape(b, p, h, d)


def remat(fn, policy: str, static_argnums: tuple[int, ...] = ()):
  """Rematerialise a block call: 'none', 'full' (recompute all) or 'dots' (keep matmul outputs)."""
  if policy == "none":
    return fn
  saveable = jax.checkpoint_policies.dots_with_no_batch_dims_saveable if policy == "dots" else None
  return nnx.remat(fn, policy=saveable, static_argnums=static_argnums)
