"""Greedy generation against step-by-step decoding."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


def test_greedy_generation_matches_manual_decoding():
  from rewatch_jax.generate import generate
  from rewatch_jax.models import Qwen25VL, from_hf_inputs
  from tests.hf_reference import make_batch, tiny_config
  cfg = tiny_config()
  model = Qwen25VL(cfg, rngs=nnx.Rngs(3))
  batch = make_batch(cfg, [[3, ("video", (2, 4, 4), 1.0), 4], [2]], seed=4)
  inputs = jax.tree.map(jnp.asarray, from_hf_inputs(cfg, **batch))
  out = np.asarray(generate(model, inputs, max_new_tokens=5, stop_ids=[10_000]).tokens)  # no such token: no stop
  # manual: append the argmax token and run the full model again each time
  ids, mask = batch["input_ids"], batch["attention_mask"]
  for k in range(5):
    full = from_hf_inputs(cfg, **dict(batch, input_ids=ids, attention_mask=mask))
    nxt = np.asarray(model(jax.tree.map(jnp.asarray, full)))[:, -1].argmax(-1)
    np.testing.assert_array_equal(out[:, k], nxt)
    ids = np.concatenate([ids, nxt[:, None]], 1)
    mask = np.concatenate([mask, np.ones((2, 1), mask.dtype)], 1)
