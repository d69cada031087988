r"""Convert between Hugging Face Qwen2.5-VL folders and rewatch-jax Orbax checkpoints.

  python launch/convert.py --hf_dir DIR --out_dir DIR                 # HF -> Orbax (step 0)
  python launch/convert.py --checkpoint_dir DIR --hf_out DIR [--step N]  # Orbax -> HF
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags, logging  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("hf_dir", None, "Hugging Face folder (config.json + *.safetensors), local or gs://.")
flags.DEFINE_string("out_dir", None, "Orbax checkpoint directory to write (with --hf_dir).")
flags.DEFINE_string("checkpoint_dir", None, "rewatch-jax checkpoint directory to export.")
flags.DEFINE_string("hf_out", None, "Hugging Face folder to write (with --checkpoint_dir).")
flags.DEFINE_integer("step", None, "Checkpoint step to export (default: latest).")
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Parameter dtype to convert to.")


def main(argv):
  del argv
  from rewatch_jax import checkpoint, hf
  if bool(FLAGS.hf_dir) == bool(FLAGS.checkpoint_dir):
    raise app.UsageError("give exactly one of --hf_dir (with --out_dir) or --checkpoint_dir (with --hf_out)")
  if FLAGS.hf_dir:
    if not FLAGS.out_dir:
      raise app.UsageError("--hf_dir needs --out_dir")
    model = hf.load_pretrained(FLAGS.hf_dir, dtype=FLAGS.dtype)
    checkpoint.save_model(model, FLAGS.out_dir)
    logging.info("wrote %s", FLAGS.out_dir)
    print(f"converted {FLAGS.hf_dir} -> {FLAGS.out_dir} (step 0, {FLAGS.dtype})")
  else:
    if not FLAGS.hf_out:
      raise app.UsageError("--checkpoint_dir needs --hf_out")
    model = checkpoint.load_model(FLAGS.checkpoint_dir, step=FLAGS.step, param_dtype=FLAGS.dtype,
                                  dtype=FLAGS.dtype)
    hf.save_pretrained(model, FLAGS.hf_out)
    print(f"exported {FLAGS.checkpoint_dir} -> {FLAGS.hf_out}")


if __name__ == "__main__":
  app.run(main)
