r"""Training entry point (absl + ml_collections): `python launch/train.py` or `rewatch-train`.

  python launch/train.py --config configs/demo.py --workdir /tmp/rewatch_demo
  python launch/train.py --config configs/sft_qwen2_5_vl_7b.py --workdir gs://... \
      --config.init_from_hf=... --config.data.dir=... --config.optimizer.learning_rate=2e-6

The config is locked: a mistyped override fails at start-up, and so does any value the run cannot
use (rewatch_jax/train/resolve.py names the key and the fix). The resolved config goes to
<workdir>/config.json. Running the same command again resumes from the last checkpoint. On a
Cloud TPU pod run it on every host (see launch/sweep.py --tpu); multi-host is detected, or
set --coordinator_address/--num_processes/--process_id.
"""

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from rewatch_jax import host

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file (path.py[:variant]).", lock_config=True)
flags.DEFINE_string("workdir", None, "Checkpoints, metrics and results (local path or gs://).")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-process runs).")
flags.DEFINE_integer("num_processes", None, "Processes in a multi-process run.")
flags.DEFINE_integer("process_id", None, "This process's index in a multi-process run.")
flags.mark_flags_as_required(["config", "workdir"])


def init_distributed():
  import jax  # (after absl has parsed the flags: JAX reads its own from the environment)
  if FLAGS.coordinator_address:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # only affects CPU devices
    jax.distributed.initialize(coordinator_address=FLAGS.coordinator_address,
                               num_processes=FLAGS.num_processes, process_id=FLAGS.process_id)
  elif "," in os.environ.get("TPU_WORKER_HOSTNAMES", "") or os.environ.get("JAX_COORDINATOR_ADDRESS"):
    jax.distributed.initialize()  # Cloud TPU pod / cluster environment: auto-detected


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  host.show_library_logs(FLAGS["verbosity"].present)
  if host.HUGETLB in os.environ.get("GLIBC_TUNABLES", ""):
    logging.info("CPU backend: malloc uses transparent huge pages (GLIBC_TUNABLES=%s; rewatch_jax/host.py; "
                 "REWATCH_CPU_MALLOC=0 keeps glibc's defaults)", os.environ["GLIBC_TUNABLES"])
  init_distributed()
  import jax

  from rewatch_jax.train import driver, resolve
  try:
    run = resolve.resolve(FLAGS.config, FLAGS.workdir)
  except resolve.ConfigError as e:
    sys.exit(f"error: {e}")
  if run.config.compilation_cache_dir:
    jax.config.update("jax_compilation_cache_dir", run.config.compilation_cache_dir)
  driver.run(run)


def entry():
  """The `rewatch-train` console script."""
  try:
    host.reexec_if_cpu()  # first: glibc reads its malloc tunables only at start-up
  except ValueError as e:  # a bad REWATCH_CPU_MALLOC
    sys.exit(f"error: {e}")
  app.run(main)


if __name__ == "__main__":
  entry()
