"""Device meshes: from a config's named axes, or the one a model's parameters are on; and values
gathered from every process."""

from __future__ import annotations

import json
import math

import jax
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils


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


def model_mesh(model) -> jax.sharding.Mesh:
  """The mesh the model's parameters are on (one device's mesh for an unsharded model)."""
  sharding = jax.tree.leaves(nnx.state(model, nnx.Param))[0].sharding
  if isinstance(sharding, jax.sharding.NamedSharding):
    return sharding.mesh
  return jax.sharding.Mesh(np.array(sorted(sharding.device_set, key=lambda d: d.id)), ("data",))


def allgather_json(value) -> list:
  """`value` (JSON-able) from every process, in process order."""
  data = np.frombuffer(json.dumps(value).encode(), np.uint8)
  sizes = np.asarray(multihost_utils.process_allgather(np.array([len(data)], np.int64)))[:, 0]
  padded = np.zeros(int(sizes.max()), np.uint8)
  padded[:len(data)] = data
  parts = np.asarray(multihost_utils.process_allgather(padded))
  return [json.loads(bytes(parts[i, :sizes[i]])) for i in range(len(sizes))]
