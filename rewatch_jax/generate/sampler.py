"""The sampler: one jitted prefill, then a `lax.while_loop` decode over a preallocated cache that
ends as soon as every row has stopped.

Each prompt of a batch is encoded once (vision tower and prefill) and sampled `num_samples` times
from that one prefix: the cache keeps the prompt's keys and values once, and its samples read them
together (`models.text.KVCache`, `layers.decode_attention`). A token is the argmax (temperature 0)
or a draw from the temperature-scaled distribution cut to its `top_k` most likely tokens, then to
the fewest whose probability reaches `top_p` (without top_k, found without sorting the vocabulary,
`_nucleus_floor`, and drawn with one uniform number a row: on a CPU a Gumbel draw a token took 4x
the time of the whole cut). `logprobs` are of the chosen tokens under the
temperature-scaled distribution before that cut (temperature 0: the raw logits' log-softmax): what a
trainer recomputes from the same logits. A row stops at the first token of `stop_ids` (the released
Qwen2.5-VL models stop at both <|im_end|> and <|endoftext|>: `ModelConfig.stop_token_ids`).

Prompts may be padded on either side: the first new token comes from each row's last real position
and new tokens continue its text position ids (last M-RoPE id + 1).

On a mesh (`mesh=`), rows are data-parallel over the batch axes and the cache carries the same
shardings (`models.sharding` rules). A training state keeps its weights split by FSDP, which a
decode step would gather again at every token; `for_sampling` lays them out once per update
instead (SAMPLER_RULES: whole on every data/fsdp device, tensor parallelism kept), device to
device. At 7B in bf16 that is ~15 GB per chip over tensor = 1, ~3.8 GB over tensor = 4.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct

from rewatch_jax.models import ModelInputs, Qwen25VL, from_hf_inputs
from rewatch_jax.models.sharding import DEFAULT_RULES, Rules, axis_rules, constrain, param_shardings

# Sampling's parameter layout: FSDP's split of the embedding dimension undone, the rest as training's.
SAMPLER_RULES: Rules = tuple((name, None if name == "embed" else axes) for name, axes in DEFAULT_RULES)


@struct.dataclass
class Generation:
  tokens: jax.Array  # (rows, max_new_tokens) int32, a prompt's samples consecutive; stop_ids[0] after a row's end
  logprobs: jax.Array  # (rows, max_new_tokens) float32; 0 after a row's end
  lengths: jax.Array  # (rows,) int32: tokens generated, the stop token included


def generate(model: Qwen25VL, inputs: ModelInputs, *, max_new_tokens: int, stop_ids: Sequence[int],
             temperature: float = 0.0, top_p: float = 1.0, top_k: int = 0, num_samples: int = 1, seed: int = 0,
             max_length: int | None = None, mesh: jax.sharding.Mesh | None = None) -> Generation:
  """Up to `max_new_tokens` tokens for each of `num_samples` samples of every prompt in `inputs`.
  `max_length`: prompt plus answer must fit it (e.g. the training bucket a rollout goes to);
  `mesh`: the rows and the cache are sharded over its batch axes."""
  if max_new_tokens < 1 or num_samples < 1 or top_k < 0 or temperature < 0 or not 0 < top_p <= 1:
    raise ValueError(f"need max_new_tokens >= 1, num_samples >= 1, top_k >= 0, temperature >= 0 and 0 < top_p <= 1; "
                     f"got {max_new_tokens}, {num_samples}, {top_k}, {temperature}, {top_p}")
  if not stop_ids:
    raise ValueError("give at least one stop id")
  length = inputs.input_ids.shape[1]
  if max_length is not None and length + max_new_tokens > max_length:
    raise ValueError(f"prompts of {length} tokens and max_new_tokens={max_new_tokens} exceed max_length={max_length}")
  limit = model.config.text.max_position_embeddings
  last = int(jax.device_get(jnp.max(inputs.positions)))  # (a global array too: the max is replicated)
  if last + max_new_tokens >= limit:
    raise ValueError(f"a prompt reaches text position {last}: {max_new_tokens} new tokens would pass the model's "
                     f"max_position_embeddings ({limit})")
  return _generate(model, inputs, jax.random.key(seed), max_new_tokens=max_new_tokens, stop_ids=tuple(stop_ids),
                   temperature=float(temperature), top_p=float(top_p), top_k=int(top_k), num_samples=num_samples,
                   mesh=mesh)


def for_sampling(model: Qwen25VL, mesh: jax.sharding.Mesh, rules: Rules = SAMPLER_RULES) -> Qwen25VL:
  """`model` with its parameters laid out for sampling on `mesh` (see the module docstring)."""
  graphdef, state = nnx.split(model)
  return nnx.merge(graphdef, jax.device_put(state, param_shardings(state, mesh, rules)))


@functools.partial(nnx.jit, static_argnames=("max_new_tokens", "stop_ids", "temperature", "top_p", "top_k",
                                             "num_samples", "mesh"))
def _generate(model: Qwen25VL, inputs: ModelInputs, key: jax.Array, *, max_new_tokens: int, stop_ids: tuple[int, ...],
              temperature: float, top_p: float, top_k: int, num_samples: int,
              mesh: jax.sharding.Mesh | None = None) -> Generation:
  if mesh is None:
    return _sample(model, inputs, key, max_new_tokens, stop_ids, temperature, top_p, top_k, num_samples)
  with axis_rules(mesh):
    return _sample(model, inputs, key, max_new_tokens, stop_ids, temperature, top_p, top_k, num_samples)


def _sample(model, inputs, key, max_new_tokens, stop_ids, temperature, top_p, top_k, num_samples) -> Generation:
  b, length = inputs.input_ids.shape
  rows = b * num_samples
  hidden, cache = model.prefill(inputs, num_samples, max_new_tokens)
  real = inputs.attention_mask.astype(bool)
  last = jnp.max(jnp.where(real, jnp.arange(length), 0), axis=1)
  h_last = jnp.take_along_axis(hidden, last[:, None, None], axis=1)[:, 0]
  logits = constrain(jnp.repeat(model.text.logits(h_last), num_samples, axis=0), ("batch", "vocab"))  # shared
  position = jnp.repeat(jnp.max(jnp.where(real[None], inputs.positions, -1), axis=(0, 2)) + 1, num_samples)
  stops = jnp.asarray(stop_ids, jnp.int32)
  choose = functools.partial(_choose, temperature=temperature, top_p=top_p, top_k=top_k)

  def record(step, token, logprob, out):
    tokens, logprobs, lengths, done = out
    tokens = tokens.at[:, step].set(jnp.where(done, stops[0], token))
    logprobs = logprobs.at[:, step].set(jnp.where(done, 0.0, logprob))
    lengths = jnp.where(done, lengths, step + 1)
    return tokens, logprobs, lengths, done | jnp.isin(token, stops)

  key, first = jax.random.split(key)
  token, logprob = choose(logits, first)
  empty = (constrain(jnp.zeros((rows, max_new_tokens), jnp.int32), ("batch", None)),
           constrain(jnp.zeros((rows, max_new_tokens), jnp.float32), ("batch", None)),
           constrain(jnp.zeros((rows,), jnp.int32), ("batch",)), constrain(jnp.zeros((rows,), bool), ("batch",)))
  out = record(0, token, logprob, empty)

  def unfinished(carry):
    step, _, _, _, _, out = carry
    return (step < max_new_tokens) & ~jnp.all(out[3])

  def step_once(carry):
    step, token, position, cache, key, out = carry
    logits, cache = model.decode_step(token, position, cache)
    key, sub = jax.random.split(key)
    token, logprob = choose(logits, sub)
    return step + 1, token, position + 1, cache, key, record(step, token, logprob, out)

  carry = (jnp.ones((), jnp.int32), token, position, cache, key, out)
  tokens, logprobs, lengths, _ = jax.lax.while_loop(unfinished, step_once, carry)[-1]
  return Generation(tokens, logprobs, lengths)


def _choose(logits: jax.Array, key: jax.Array, temperature: float, top_p: float, top_k: int):
  """A token a row and its log-probability (see the module docstring); fp32."""
  logits = logits.astype(jnp.float32)
  if temperature == 0:
    token = jnp.argmax(logits, -1)
    logprobs = jax.nn.log_softmax(logits, -1)
  else:
    scaled = logits / temperature
    logprobs = jax.nn.log_softmax(scaled, -1)
    if top_k:  # the k most likely, in descending order, then the top_p cut among them
      values, index = jax.lax.top_k(scaled, top_k)
      if top_p < 1:
        probs = jax.nn.softmax(values, -1)
        values = jnp.where(jnp.cumsum(probs, -1) - probs < top_p, values, -jnp.inf)  # keeps the first
      token = jnp.take_along_axis(index, jax.random.categorical(key, values)[:, None], -1)[:, 0]
    else:  # by the inverse of the cumulative distribution: one uniform draw a row, not one a token
      probs = jnp.exp(logprobs)
      if top_p < 1:
        probs = jnp.where(probs >= _nucleus_floor(probs, top_p)[:, None], probs, 0.0)
      cdf = jnp.cumsum(probs, -1)
      u = jax.random.uniform(key, (cdf.shape[0], 1)) * cdf[:, -1:]
      token = jnp.minimum(jnp.sum(cdf <= u, -1), cdf.shape[-1] - 1)
  token = token.astype(jnp.int32)
  return token, jnp.take_along_axis(logprobs, token[:, None], -1)[:, 0]


def _nucleus_floor(probs: jax.Array, top_p: float) -> jax.Array:
  """Per row, the probability of the least likely token of the nucleus: the largest p such that the
  tokens at least that likely hold top_p of the mass. Found by bisection on the float32 bit pattern
  (order-preserving for positive floats: exact in 32 halvings), each a masked sum over the
  vocabulary, instead of sorting it: on a CPU a full sort of 32 rows of 32k logits took ~225 ms a
  step. Tokens tied with the least likely one are all kept."""
  bits = jax.lax.bitcast_convert_type(probs, jnp.int32)

  def halve(_, bounds):  # invariant: the answer lies in [lo, hi]; the mass at >= lo reaches top_p
    lo, hi = bounds
    mid = lo + (hi - lo + 1) // 2
    enough = jnp.sum(jnp.where(bits >= mid[:, None], probs, 0.0), -1) >= top_p
    return jnp.where(enough, mid, lo), jnp.where(enough, hi, mid - 1)

  lo, _ = jax.lax.fori_loop(0, 32, halve, (jnp.zeros(bits.shape[0], jnp.int32), jnp.max(bits, -1)))
  return jax.lax.bitcast_convert_type(lo, jnp.float32)


def generate_hf_inputs(model: Qwen25VL, *, max_new_tokens: int, eos_id: int | Sequence[int], temperature: float = 0.0,
                       top_p: float = 1.0, top_k: int = 0, num_samples: int = 1, seed: int = 0, bucket: int = 64,
                       **processor_outputs) -> Generation:
  """`generate` on exactly what the HF Qwen2.5-VL processor returns (numpy or torch; as
  `forward_hf_inputs` takes them), the prompts left-padded to a multiple of `bucket` tokens so that
  prompts of similar lengths share one compiled program. Returns numpy arrays."""
  ids, mask = np.asarray(processor_outputs["input_ids"]), np.asarray(processor_outputs["attention_mask"])
  pad = -ids.shape[1] % bucket
  processor_outputs.update(input_ids=np.pad(ids, ((0, 0), (pad, 0))), attention_mask=np.pad(mask, ((0, 0), (pad, 0))))
  inputs = jax.tree.map(jnp.asarray, from_hf_inputs(model.config, **processor_outputs))
  stops = [eos_id] if isinstance(eos_id, int) else list(eos_id)
  out = generate(model, inputs, max_new_tokens=max_new_tokens, stop_ids=stops, temperature=temperature, top_p=top_p,
                 top_k=top_k, num_samples=num_samples, seed=seed)
  return jax.tree.map(np.asarray, out)
