"""What a model takes from the video: the same questions with each video swapped for another's
frames ("swap") or blanked ("blank").

* "swap": each question gets the frames of *another* video with the same patch layout (the set is
  read in a seeded shuffled order so that a batch mixes videos). The frames stay in distribution;
  only their content no longer fits the question. A model that answers from the question alone
  scores the same; one that reads the video drops.
* "blank": every frame replaced by zeros (mid-grey after normalisation). Out of distribution, so a
  drop can mean "the model is confused", not "the model reads the video"; prefer "swap".
"""

from __future__ import annotations

import collections

import numpy as np

ABLATIONS = ("", "swap", "blank")


def blank_videos(inputs):
  """Every pixel row replaced by normalised zeros (float rows: the pipeline's rows are raw uint8,
  where 0 would be black)."""
  return inputs.replace(pixel_values=np.zeros(inputs.pixel_values.shape, np.float32))


def swap_videos(inputs, videos: list[str]):
  """Give each example the pixels of an example from another video with the same patch layout
  (same rotary ids and segments, so the rows are interchangeable). Within each layout group the
  examples are sorted by video and shifted by the largest video's count: everyone moves to another
  video whenever no video holds more than half the group. `videos`: of the first rows (the real
  ones; padding rows after them keep their pixels). Returns (inputs, number moved)."""
  rows = len(inputs.input_ids)
  layout = np.concatenate([np.asarray(inputs.vision_rotary_ids).reshape(rows, -1),
                           np.asarray(inputs.window_segment), np.asarray(inputs.frame_segment)], axis=1)
  groups = collections.defaultdict(list)
  for i, row in enumerate(layout[:len(videos)]):
    groups[row.tobytes()].append(i)
  src = np.arange(rows)
  for members in groups.values():
    count = collections.Counter(videos[i] for i in members)
    order = sorted(members, key=lambda i: (-count[videos[i]], videos[i]))
    shift = max(count.values())
    if shift < len(order):
      src[order] = np.roll(order, -shift)
  moved = sum(videos[j] != videos[i] for i, j in enumerate(src[:len(videos)]))
  return inputs.replace(pixel_values=np.asarray(inputs.pixel_values)[src]), moved
