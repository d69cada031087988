"""Test set-up: 8 simulated CPU devices and full-precision matmuls, before jax is imported."""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")


SLOW = "python -m pytest -q -m slow tests"


def pytest_configure(config):
  config.addinivalue_line("markers", f"slow: end-to-end tests of minutes each; run with `{SLOW}`")
  # Grain worker processes read absl flags; outside app.run they must be marked parsed.
  from absl import flags
  flags.FLAGS.mark_as_parsed()


def pytest_collection_modifyitems(config, items):
  """The default suite (`python -m pytest -q tests`) skips tests marked slow; `-m slow` runs them."""
  if "slow" in (config.getoption("markexpr") or ""):
    return
  skip = pytest.mark.skip(reason=f"slow: run with `{SLOW}`")
  for item in items:
    if "slow" in item.keywords:
      item.add_marker(skip)


def small_sft_config():
  """The demo's SFT recipe shrunk to 4 toy videos and 6 steps of batch 8."""
  from configs import demo
  c = demo.get_config("sft")
  c.demo.videos, c.demo.test_fraction = 4, 0.25
  c.data.batch_size = 8
  c.total_steps, c.log_every_steps, c.checkpoint_every_steps = 6, 1, 2
  return c


@pytest.fixture(scope="session")
def prepared(tmp_path_factory):
  """(workdir, prepared data dir, toy tokenizer) of a small toy world, built once per session."""
  from rewatch_jax.data.video import VideoSpec
  from rewatch_jax.demo import hooks
  work = tmp_path_factory.mktemp("sftdata")
  c = small_sft_config()
  toy = hooks.prepare_toyworld(c.demo, VideoSpec(**c.video_spec), str(work))
  return str(work), toy.data_dir, toy.tokenizer


def resolved(c, data_dir: str, tokenizer: str, workdir: str, devices=None):
  """`resolve` of a demo config on the prepared toy world (no toy world of its own)."""
  from rewatch_jax.train.resolve import resolve
  c.demo.videos, c.data.dir, c.tokenizer = 0, data_dir, tokenizer
  return resolve(c, workdir, devices)
