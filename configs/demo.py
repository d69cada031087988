"""The embedded demo: a tiny Qwen2.5-VL-architecture model on CPU in minutes.

  python launch/train.py --config configs/demo.py --workdir /tmp/rewatch_demo

Until the SFT trainer lands, the demo builds the model, renders a small procedural video on the
host, runs the processor and the jitted forward pass + next-token loss, and reports compile time,
step time and tokens/s.
"""

import ml_collections

from configs import models


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  del arg
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.model = models.get_config("tiny")
  c.demo = ml_collections.ConfigDict(dict(
      batch_size=2,
      num_frames=8,  # frames per video (temporal patches of 2)
      frame_size=112,  # pixels per side: 8x8 patches, 2x2 windows of merged tokens per frame
      text_tokens=48,
      steps=5,  # forward passes timed after compilation
  ))
  return c
