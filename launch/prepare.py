r"""Prepare datasets.

  python launch/prepare.py --toyworld 200 --out /tmp/toy       (or `rewatch-prepare ...`)
      the embedded procedural world: out/videos/*.mp4 and ReWatch JSONL records per split
      (train_/test_ caption, qa, cot, cot_hallucinated, perception) and manifest.json; re-running
      with the same arguments reuses the videos.

  python launch/prepare.py --records qa.jsonl --videos DIR --out DIR --config qa [--name NAME] \
      [--captions caption.jsonl] [--processes 8] [--num_shards N --shard_index I]
      JSONL records + videos -> a prepared set: TFDS `rewatch` ArrayRecord files of tokens (kinds
      caption, qa, cot, rl, qa_eval; --name: a set of that kind under another name, e.g. a QA subset
      to weight as a task of its own), and OUT/video_store/ with each video's decoded frames once
      for every record and set. Bad videos are skipped and listed in prepare_report.json
      (--on_error=raise stops instead). On a pod, run it on every host with its --shard_index.
      --records_format=rewatch reads the released ReWatch JSON files instead (--records qa.json
      for qa/qa_eval/rl, cot.json for cot, caption.json for caption and --captions),
      --records_format=video_r1 Video-R1's (videos only; its image records are left out).
"""

import logging
import time

from absl import app, flags

from rewatch_jax import host
from rewatch_jax.data import records, tfds_rewatch
from rewatch_jax.data.video import VideoSpec
from rewatch_jax.demo import toyworld

log = logging.getLogger("rewatch_jax.launch.prepare")

FLAGS = flags.FLAGS
flags.DEFINE_integer("toyworld", None, "Number of toy-world videos to generate.")
flags.DEFINE_string("out", None, "Output directory.")
flags.DEFINE_integer("seed", 0, "First toy-world seed (video i uses seed + i).")
flags.DEFINE_float("test_fraction", 0.2, "Share of toy-world videos held out as the test split.")
flags.DEFINE_string("records", None, "Records to prepare (JSONL, or see --records_format).")
flags.DEFINE_enum("records_format", "jsonl", ["jsonl", "rewatch", "video_r1"],
                  "jsonl: ours (rewatch_jax/data/records.py); rewatch: the released ReWatch JSON files; "
                  "video_r1: Video-R1's JSON (problem, solution, path).")
flags.DEFINE_string("videos", None, "Video root that record paths are relative to.")
flags.DEFINE_enum("config", None, sorted(tfds_rewatch.KINDS), "The kind of prepared set to build.")
flags.DEFINE_string("name", None, "The prepared set's name (default: --config), under which trainers read it.")
flags.DEFINE_string("captions", None, "Caption JSONL (the rl config keeps each video's caption).")
flags.DEFINE_string("tokenizer", None, "tokenizer.json or a folder with one (default: the Qwen vocabulary).")
flags.DEFINE_string("cache_dir", None, "Optional frame cache to decode through (e.g. shared by several --out folders); "
                    "within one --out each video is decoded once anyway (its video store).")
flags.DEFINE_integer("processes", 1, "Local decoding processes, each decoding one video at a time with cores / "
                     "processes decoder threads and writing it to the video store. On a many-core host "
                     "use about one per core (memory: ~0.5 GB each); on 2 cores 1 and 2 prepare about "
                     "as fast (benchmarks/RESULTS.md).")
flags.DEFINE_integer("num_shards", 1, "Hosts preparing disjoint shards.")
flags.DEFINE_integer("shard_index", 0, "This host's shard.")
flags.DEFINE_enum("on_error", "skip", ["skip", "raise"], "Skip-and-report bad records or stop.")
flags.DEFINE_float("fps", 2.0, "VideoSpec: frames sampled per second.")
flags.DEFINE_integer("max_frames", 192, "VideoSpec: most frames per video.")
flags.DEFINE_integer("min_pixels", 128 * 28 * 28, "VideoSpec: least pixels per frame.")
flags.DEFINE_integer("max_pixels", 128 * 28 * 28, "VideoSpec: most pixels per frame.")
flags.DEFINE_integer("total_pixels", 12288 * 28 * 28, "VideoSpec: most pixels per video.")


def _read(path: str, kind: str) -> list:
  """Records of `path` in --records_format (`kind`: which released ReWatch file it is)."""
  if FLAGS.records_format == "rewatch":
    return records.import_rewatch(path, kind)
  if FLAGS.records_format == "video_r1":
    if kind != "qa":
      raise app.UsageError("Video-R1 files hold QA: use them with the qa, qa_eval or rl config")
    return records.import_video_r1(path)
  if path.endswith(".json"):
    raise app.UsageError(f"{path} is JSON, not JSONL: released ReWatch or Video-R1 files need "
                         "--records_format=rewatch or video_r1")
  return list(records.read_jsonl(path))


def main(argv):
  host.show_library_logs(FLAGS["verbosity"].present)
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not FLAGS.out:
    raise app.UsageError("--out is required")
  t0 = time.perf_counter()
  if FLAGS.toyworld is not None:
    if FLAGS.toyworld < 1:
      raise app.UsageError("--toyworld must be >= 1")
    stats = toyworld.build(FLAGS.out, FLAGS.toyworld, seed=FLAGS.seed, test_fraction=FLAGS.test_fraction)
    log.info("toy world: %d videos in %.1fs -> %s\n%s", FLAGS.toyworld, time.perf_counter() - t0, FLAGS.out,
             "\n".join(f"  {name:<24} {n}" for name, n in stats.items()))
    return
  if not (FLAGS.records and FLAGS.videos and FLAGS.config):
    raise app.UsageError("give --toyworld N, or --records, --videos and --config")
  spec = VideoSpec(fps=FLAGS.fps, max_frames=FLAGS.max_frames, min_pixels=FLAGS.min_pixels,
                   max_pixels=FLAGS.max_pixels, total_pixels=FLAGS.total_pixels)
  recs = _read(FLAGS.records, {"caption": "caption", "cot": "cot"}.get(FLAGS.config, "qa"))
  caps = _read(FLAGS.captions, "caption") if FLAGS.captions else []
  log.info("read %d records from %s (%s)", len(recs), FLAGS.records, FLAGS.records_format)
  name = FLAGS.name or FLAGS.config
  report = tfds_rewatch.prepare(
      FLAGS.out, name, recs, FLAGS.videos, spec, kind=FLAGS.config, captions=caps, tokenizer=FLAGS.tokenizer,
      cache_dir=FLAGS.cache_dir, on_error=FLAGS.on_error, processes=FLAGS.processes,
      num_shards=FLAGS.num_shards, shard_index=FLAGS.shard_index)
  log.info("%s: wrote %d of %d records (skipped %d) in %.1fs; %d video%s, %d new in the video store; VideoSpec %s, "
           "tokenizer %s", name, report["written"], report["records"], len(report["skipped"]),
           time.perf_counter() - t0, report["videos"], "s" * (report["videos"] != 1), report["videos_stored"],
           spec.hash, report["tokenizer_hash"])
  for s in report["skipped"][:10]:
    log.warning("skipped %s: %s", s["id"], s["error"])


def entry():
  """The `rewatch-prepare` console script."""
  app.run(main)


if __name__ == "__main__":
  entry()
