"""The answer parser's rules, and greedy generation against step-by-step decoding."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rewatch_jax.rewards.answers import answer_unclosed, choice_letter, extract_answer, is_correct

OPTS = ("red", "green", "blue", "black")


@pytest.mark.parametrize("response, expected", [
    ("<answer>B</answer>", True), ("think <answer>A</answer> no wait <answer>(B)</answer>", True),
    ("<answer>B. green</answer>", True), ("<answer>Option B</answer>", True), ("<answer>green</answer>", True),
    ("<answer>C</answer>", False), ("<answer>a red one</answer>", None), ("<answer></answer>", None),
    ("B", None), ("<answer>E</answer>", None),
])
def test_mc_parsing(response, expected):
  assert is_correct(response, "B", "mc", OPTS) == expected


def test_open_and_article_rules():
  assert is_correct("<answer>The Door.</answer>", "door", "open") is True
  assert is_correct("<answer>3</answer>", "4", "open") is False
  assert extract_answer("no tags") is None
  assert choice_letter("a", OPTS) is None and choice_letter("A", OPTS) == "A" and choice_letter("(a)", OPTS) == "A"


def test_an_answer_cut_off_mid_way_is_told_apart():
  assert answer_unclosed("<answer>it passes behind the red square</")
  assert answer_unclosed("<think>x</think><answer>B</answer> wait, <answer>C")
  assert not answer_unclosed("<answer>B</answer>") and not answer_unclosed("<think>still thinking")
  assert not answer_unclosed("") and not answer_unclosed(None)
  assert is_correct("<answer>it passes behind the red square</", "x", "open") is None


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
