r"""Expand a config's `sweep()` grid into runs; print them (default) or launch them
(`python launch/sweep.py` or `rewatch-sweep`).

  python launch/sweep.py --config configs/sft_qwen2_5_vl_7b.py --workdir gs://bucket/sweeps/lr
  python launch/sweep.py --config configs/sft_qwen2_5_vl_7b.py --workdir gs://bucket/sweeps/lr \
      --tpu my-v5p-64 --zone us-east5-a --project my-project [--launch]

Each run gets <workdir>/<run name> and its overrides as --config.x=y flags. With --tpu the
command is wrapped in `gcloud compute tpus tpu-vm ssh ... --worker=all`, which starts the same
command on every host of the pod (JAX then initialises multi-host itself). Without --launch this
is a dry run that only prints.
"""

import importlib.util
import shlex
import subprocess
import sys

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("config", None, "Config file with a sweep() function (path.py[:variant]).")
flags.DEFINE_string("workdir", None, "Base directory; each run gets a subdirectory.")
flags.DEFINE_string("tpu", None, "Cloud TPU VM name: run on every worker of the pod.")
flags.DEFINE_string("zone", None, "Cloud TPU zone.")
flags.DEFINE_string("project", None, "Cloud project.")
flags.DEFINE_string("repo_dir", "~/rewatch-jax", "Where the repository lives on the TPU hosts.")
flags.DEFINE_bool("launch", False, "Run the commands (sequentially) instead of printing them.")
flags.mark_flags_as_required(["config", "workdir"])


def load_sweep(config_arg: str) -> list[dict]:
  path = config_arg.split(":")[0]
  spec = importlib.util.spec_from_file_location("sweep_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)  # (it imports rewatch_jax: the installed package)
  if not hasattr(module, "sweep"):
    raise app.UsageError(f"{path} has no sweep() function")
  return module.sweep()


def run_name(overrides: dict) -> str:
  return "_".join(f"{k.split('.')[-1]}={v}" for k, v in overrides.items()).replace("/", "-")


def commands(config_arg, workdir, grid, tpu=None, zone=None, project=None, repo_dir="~/rewatch-jax"):
  out = []
  for overrides in grid:
    args = ["python", "launch/train.py", "--config", config_arg,
            "--workdir", f"{workdir.rstrip('/')}/{run_name(overrides)}"]
    args += [f"--{k}={v}" for k, v in overrides.items()]
    cmd = shlex.join(args)
    if tpu:
      remote = f"cd {repo_dir} && {cmd}"
      gcloud = ["gcloud", "compute", "tpus", "tpu-vm", "ssh", tpu, "--worker=all", f"--command={remote}"]
      if zone:
        gcloud.append(f"--zone={zone}")
      if project:
        gcloud.append(f"--project={project}")
      cmd = shlex.join(gcloud)
    out.append(cmd)
  return out


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  grid = load_sweep(FLAGS.config)
  cmds = commands(FLAGS.config, FLAGS.workdir, grid, FLAGS.tpu, FLAGS.zone, FLAGS.project, FLAGS.repo_dir)
  for cmd in cmds:
    print(cmd)
    if FLAGS.launch:
      subprocess.run(cmd, shell=True, check=True)  # noqa: S602 -- the user's own command line
  if not FLAGS.launch:
    print(f"# dry run: {len(cmds)} runs; add --launch to start them", file=sys.stderr)


def entry():
  """The `rewatch-sweep` console script."""
  app.run(main)


if __name__ == "__main__":
  entry()
