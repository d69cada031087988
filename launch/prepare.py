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
      (--on_error=raise stops instead), and so are captions ending more than --duration_tolerance
      seconds past their decoded video (with an rl set's records whose video's caption does);
      records stating another duration than the decoded one are kept and listed too. On a pod, run
      it on every host with its --shard_index.
      --records takes several files, each `[FORMAT:]PATH` (JSON lists or JSONL) in its own format
      (default --records_format): jsonl (ours), rewatch (the released ReWatch files: qa.json for
      qa/qa_eval/rl, cot.json for cot, caption.json for caption and --captions), video_r1
      (Video-R1-260k and -COT-165k; its image records are left out), longvideo_reason. E.g. the
      RL mix in one call: --config rl --records rewatch:qa.json,video_r1:Video-R1-260k.json,\
      longvideo_reason:lvr.json --captions rewatch:caption.json. A bad row is skipped and reported,
      never the whole file; question types outside the alias table are kept as "other" and counted.
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
flags.DEFINE_list("records", None, "Record files to prepare, each [FORMAT:]PATH (FORMAT: one of --records_format's).")
flags.DEFINE_enum("records_format", "jsonl", list(records.FORMATS),
                  "The format of --records and --captions files without a FORMAT: prefix. jsonl: ours "
                  "(rewatch_jax/data/records.py); rewatch: the released ReWatch files; video_r1: Video-R1's "
                  "(problem, problem_type, solution, path; process for CoT); longvideo_reason: LongVideo-Reason's "
                  "(problem, answer, videos, reasoning).")
flags.DEFINE_string("videos", None, "Video root that record paths are relative to.")
flags.DEFINE_enum("config", None, sorted(tfds_rewatch.KINDS), "The kind of prepared set to build.")
flags.DEFINE_string("name", None, "The prepared set's name (default: --config), under which trainers read it.")
flags.DEFINE_list("captions", None, "Caption files, [FORMAT:]PATH each (the rl config keeps each video's caption).")
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
flags.DEFINE_float("duration_tolerance", tfds_rewatch.DURATION_TOLERANCE,
                   "Seconds a caption may end past its decoded video and still be trained on (further: skipped and "
                   "reported; an rl set's records whose video's caption does too), and a record's duration differ "
                   "from the decoded one unreported.")
flags.DEFINE_float("fps", 2.0, "VideoSpec: frames sampled per second.")
flags.DEFINE_integer("max_frames", 192, "VideoSpec: most frames per video.")
flags.DEFINE_integer("min_pixels", 128 * 28 * 28, "VideoSpec: least pixels per frame.")
flags.DEFINE_integer("max_pixels", 128 * 28 * 28, "VideoSpec: most pixels per frame.")
flags.DEFINE_integer("total_pixels", 12288 * 28 * 28, "VideoSpec: most pixels per video.")


def _read(entries: list[str], kind: str) -> list:
  """The records of every `[FORMAT:]PATH` entry as records of `kind` (caption, qa or cot); bad rows
  skipped and reported (or, with --on_error=raise, the first stops the run)."""
  out = []
  for entry in entries:
    fmt, _, path = entry.partition(":") if entry.split(":", 1)[0] in records.FORMATS else ("", "", entry)
    fmt = fmt or FLAGS.records_format
    try:
      got = records.import_records(path, fmt, kind, video_root=FLAGS.videos or "")
    except (OSError, records.RecordError) as e:
      raise app.UsageError(f"{entry}: {e}") from None
    log.info("%s (%s): %d records, %d rows skipped", path, fmt, len(got.records), len(got.skipped))
    for where, why in got.skipped[:5]:
      log.warning("skipped %s: %s", where, why)
    if got.unmapped_types:
      log.warning("%s: question types outside the alias table, imported as 'other': %s", path, got.unmapped_types)
    if got.skipped and (FLAGS.on_error == "raise" or not got.records):
      where, why = got.skipped[0]
      hint = "" if got.records else f" (no row of {path} could be read as {fmt}: is its format another of " \
                                     f"{records.FORMATS}? prefix it, e.g. rewatch:{path})"
      raise app.UsageError(f"{where}: {why}{hint}")
    out += got.records
  return out


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
  log.info("read %d records from %s", len(recs), ", ".join(FLAGS.records))
  if FLAGS.config == "rl":  # the O&R reward checks observations against the caption of each video
    captioned = {c.video for c in caps}
    bare = [r for r in recs if r.video not in captioned]
    if bare:
      log.warning("%d of %d records have no caption for their video (e.g. %s): their observations cannot be "
                  "judged; give --captions with the same video paths", len(bare), len(recs), bare[0].video)
  name = FLAGS.name or FLAGS.config
  report = tfds_rewatch.prepare(
      FLAGS.out, name, recs, FLAGS.videos, spec, kind=FLAGS.config, captions=caps, tokenizer=FLAGS.tokenizer,
      cache_dir=FLAGS.cache_dir, on_error=FLAGS.on_error, processes=FLAGS.processes,
      num_shards=FLAGS.num_shards, shard_index=FLAGS.shard_index, duration_tolerance=FLAGS.duration_tolerance)
  log.info("%s: wrote %d of %d records (skipped %d) in %.1fs; %d video%s, %d new in the video store; VideoSpec %s, "
           "tokenizer %s", name, report["written"], report["records"], len(report["skipped"]),
           time.perf_counter() - t0, report["videos"], "s" * (report["videos"] != 1), report["videos_stored"],
           spec.hash, report["tokenizer_hash"])
  for s in report["skipped"][:10]:
    log.warning("skipped %s: %s", s["id"], s["error"])
  over, off = report.get("caption_overruns", []), report.get("duration_mismatches", [])  # (older reports: none)
  if over:
    log.warning("%d caption%s more than %.1f s past the decoded video:", len(over),
                " ends" if len(over) == 1 else "s end", report["duration_tolerance"])
  for o in over[:10]:
    log.warning("caption %s of %s ends at %s; the video holds %.1f s", o["id"], o["video"],
                records.format_timestamp(o["caption_end"]), o["duration"])
  if off:
    log.warning("%d record%s a duration more than %.1f s off the decoded video's (kept):", len(off),
                " states" if len(off) == 1 else "s state", report["duration_tolerance"])
  for o in off[:10]:
    log.warning("%s of %s states %.1f s; the video holds %.1f s", o["id"], o["video"], o["record_duration"],
                o["duration"])


def entry():
  """The `rewatch-prepare` console script."""
  app.run(main)


if __name__ == "__main__":
  entry()
