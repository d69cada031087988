r"""Convert between Hugging Face Qwen2.5-VL folders and rewatch-jax Orbax checkpoints
(`python launch/convert.py` or `rewatch-convert`).

  python launch/convert.py --hf_dir DIR --out_dir DIR                 # HF -> Orbax (step 0)
  python launch/convert.py --checkpoint_dir DIR --hf_out DIR [--step N]  # Orbax -> HF
"""

import logging

from absl import app, flags

from rewatch_jax import checkpoint, hf, host

log = logging.getLogger("rewatch_jax.launch.convert")

FLAGS = flags.FLAGS
flags.DEFINE_string("hf_dir", None, "Hugging Face folder (config.json + *.safetensors), local or gs://.")
flags.DEFINE_string("out_dir", None, "Orbax checkpoint directory to write (with --hf_dir).")
flags.DEFINE_string("checkpoint_dir", None, "rewatch-jax checkpoint directory to export.")
flags.DEFINE_string("hf_out", None, "Hugging Face folder to write (with --checkpoint_dir).")
flags.DEFINE_integer("step", None, "Checkpoint step to export (default: latest).")
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Parameter dtype to convert to.")


def main(argv):
  del argv
  host.show_library_logs(FLAGS["verbosity"].present)
  if bool(FLAGS.hf_dir) == bool(FLAGS.checkpoint_dir):
    raise app.UsageError("give exactly one of --hf_dir (with --out_dir) or --checkpoint_dir (with --hf_out)")
  if FLAGS.hf_dir:
    if not FLAGS.out_dir:
      raise app.UsageError("--hf_dir needs --out_dir")
    model = hf.load_pretrained(FLAGS.hf_dir, dtype=FLAGS.dtype)
    checkpoint.save_model(model, FLAGS.out_dir)
    log.info("converted %s -> %s (step 0, %s)", FLAGS.hf_dir, FLAGS.out_dir, FLAGS.dtype)
  else:
    if not FLAGS.hf_out:
      raise app.UsageError("--checkpoint_dir needs --hf_out")
    model = checkpoint.load_model(FLAGS.checkpoint_dir, step=FLAGS.step, param_dtype=FLAGS.dtype,
                                  dtype=FLAGS.dtype)
    hf.save_pretrained(model, FLAGS.hf_out)
    log.info("exported %s -> %s", FLAGS.checkpoint_dir, FLAGS.hf_out)


def entry():
  """The `rewatch-convert` console script."""
  app.run(main)


if __name__ == "__main__":
  entry()
