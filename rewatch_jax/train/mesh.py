"""Device mesh from config: named axes, one of them may be -1 (all remaining devices)."""

from __future__ import annotations

import math

import jax
import numpy as np


def make_mesh(axes: dict[str, int], devices=None) -> jax.sharding.Mesh:
  devices = list(jax.devices() if devices is None else devices)
  names, sizes = list(axes), [int(v) for v in axes.values()]
  if sizes.count(-1) > 1:
    raise ValueError(f"at most one mesh axis may be -1, got {axes}")
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if len(devices) % known:
      raise ValueError(f"{len(devices)} devices do not divide into mesh {axes}")
    sizes[sizes.index(-1)] = len(devices) // known
  if math.prod(sizes) != len(devices):
    raise ValueError(f"mesh {dict(zip(names, sizes))} needs {math.prod(sizes)} devices, have {len(devices)}")
  auto = (jax.sharding.AxisType.Auto,) * len(names)
  return jax.sharding.Mesh(np.array(devices).reshape(sizes), names, axis_types=auto)
