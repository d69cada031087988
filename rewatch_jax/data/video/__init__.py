"""Videos -> frames: one sampling/resizing protocol (the VideoSpec) for SFT, RL and evaluation.

    spec.py     VideoSpec; the frame count and size it gives a video (qwen-vl-utils' formulas)
    source.py   probe: size, frame rate, frame count and duration of a file
    mp4.py      ISO-BMFF boxes and sample tables, read in Python
    h264.py     which H.264 packets a decode of the sampled frames can drop (`drop_plan`)
    ffmpeg.py   the ffmpeg subprocess: select, scale and time the sampled frames; VideoError
    seeking.py  long, sparsely sampled videos: seek to each frame instead of decoding them whole
    decode.py   load_video, which picks among those paths
    cache.py    FrameCache: decoded frames kept by content, once per VideoSpec
"""

from rewatch_jax.data.video.cache import DECODER_VERSION, FrameCache, file_digest
from rewatch_jax.data.video.decode import Video, cpu_cores, load_video
from rewatch_jax.data.video.ffmpeg import VideoError, ffmpeg_exe
from rewatch_jax.data.video.source import Probe, probe
from rewatch_jax.data.video.spec import VideoSpec, frame_size, sample_indices, smart_nframes, smart_resize

__all__ = ["DECODER_VERSION", "FrameCache", "file_digest", "Video", "cpu_cores", "load_video", "VideoError",
           "ffmpeg_exe", "Probe", "probe", "VideoSpec", "frame_size", "sample_indices", "smart_nframes", "smart_resize"]
