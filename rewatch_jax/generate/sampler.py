"""Generation with the KV cache: one jitted prefill, then a fixed-length decode loop.

Prompts may be left- or right-padded: the cache marks padding slots invalid, the first new token
comes from each row's last real position, and new tokens continue each row's text position ids
(last M-RoPE id + 1). Greedy by default; temperature/top-p sampling for RL comes with the sampler.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from rewatch_jax.models import KVCache, ModelInputs, Qwen25VL


@nnx.jit(static_argnames=("max_new_tokens",))
def greedy_generate(model: Qwen25VL, inputs: ModelInputs, max_new_tokens: int, eos_id: int) -> jax.Array:
  """(B, max_new_tokens) int32 tokens; after an EOS a row keeps emitting EOS."""
  b, length = inputs.input_ids.shape
  cache = KVCache.create(model.config, b, length + max_new_tokens)
  hidden, cache = model(inputs, cache=cache, return_hidden=True)
  real = inputs.attention_mask.astype(bool)
  last = jnp.max(jnp.where(real, jnp.arange(length), 0), axis=1)
  h_last = jnp.take_along_axis(hidden, last[:, None, None], axis=1)[:, 0]
  token = jnp.argmax(model.text.logits(h_last), -1).astype(jnp.int32)
  position = jnp.max(jnp.where(real[None], inputs.positions, -1), axis=(0, 2)) + 1

  def body(i, carry):
    token, position, cache, out, done = carry
    out = out.at[:, i].set(jnp.where(done, eos_id, token))
    done = done | (token == eos_id)
    logits, cache = model.decode_step(token, position, cache)
    return jnp.argmax(logits, -1).astype(jnp.int32), position + 1, cache, out, done

  out = jnp.full((b, max_new_tokens), eos_id, jnp.int32)
  carry = (token, position, cache, out, jnp.zeros((b,), bool))
  return jax.lax.fori_loop(0, max_new_tokens, body, carry)[3]
