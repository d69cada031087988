r"""ReWatch data synthesis: videos -> captions -> QA -> filters -> MC -> CoT, over hosted models.

  python launch/synthesize.py --config configs/synthesis.py --videos DIR --out DIR \
      [--stages caption,qa,filter,mc,cot] [--dry_run] \
      [--config.client.base_url=http://HOST:PORT/v1 --config.roles.reasoner.model=NAME ...]

The API key is read from the environment variable `config.client.api_key_env` (OPENAI_API_KEY).
Running the same command again continues where a run stopped (killed, out of budget, endpoint
down): nothing done is lost or done twice, and requests already answered come from OUT/cache.
--dry_run prints the requests, tokens and cost each stage would take, and spends nothing.
Outputs and the report: data_synthesis/pipeline.py; `launch/prepare.py --records OUT/qa.jsonl
--videos DIR ...` reads the records.
"""

import logging
import sys

from absl import app, flags
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file (path.py[:variant]).", lock_config=True)
flags.DEFINE_string("videos", None, "The folder of videos (records name them relative to it).")
flags.DEFINE_string("out", None, "Output folder (rerun with the same one to resume).")
flags.DEFINE_list("stages", ["caption", "qa", "filter", "mc", "cot"], "The stages to run, in order.")
flags.DEFINE_bool("dry_run", False, "Estimate requests, tokens and cost per stage; spend nothing.")
flags.mark_flags_as_required(["config", "videos", "out"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.getLogger("httpx").setLevel(logging.WARNING)  # (a line per request otherwise)
  from data_synthesis import dry_run
  from data_synthesis.pipeline import Synthesis
  try:
    run = Synthesis(FLAGS.config, FLAGS.videos, FLAGS.out)
    if FLAGS.dry_run:
      print(dry_run.table(dry_run.estimate(run)))
      return
    report = run.run(FLAGS.stages)
  except ValueError as e:
    sys.exit(f"error: {e}")
  print(f"wrote {FLAGS.out}/report.json and README.md: files {report['files']}, spent ${report['spent']:.4f}")
  if report["stopped"]:
    sys.exit(f"stopped: {report['stopped']}")
  if report["unfinished"]:
    sys.exit(f"unfinished items (endpoint errors) {report['unfinished']}: run the same command again")


def entry():
  app.run(main)


if __name__ == "__main__":
  entry()
