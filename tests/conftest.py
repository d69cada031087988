"""Test set-up: 8 simulated CPU devices and full-precision matmuls, before jax is imported."""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")


def pytest_configure(config):
  # Grain worker processes read absl flags; outside app.run they must be marked parsed.
  from absl import flags
  flags.FLAGS.mark_as_parsed()
