"""Qwen2.5-VL architectures as ml_collections: `--config configs/models.py:7b` (3b, 7b, 32b, 72b, tiny).

Recipe configs embed one of these as `config.model`; `ModelConfig.from_dict(config.model)` turns it
back into the frozen dataclass the model takes (unknown fields fail there).
"""

import ml_collections

from rewatch_jax.models.configs import PRESETS


def get_config(arg: str = "7b") -> ml_collections.ConfigDict:
  if arg not in PRESETS:
    raise ValueError(f"unknown model size {arg!r}; choose from {sorted(PRESETS)}")
  return ml_collections.ConfigDict(PRESETS[arg].to_dict())
