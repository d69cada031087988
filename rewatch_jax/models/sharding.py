"""Logical axis names -> mesh axes (the MaxText way): the model names axes, never devices.

Every parameter carries `logical_axes` metadata (a tuple of names, one per dimension) and key
activations pass through `constrain(x, names)`. Outside an `axis_rules(mesh, rules)` context
`constrain` is the identity, so the model runs unsharded with no mesh at all.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import math
import re
from collections.abc import Mapping, Sequence

import jax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

Rules = Sequence[tuple[str, str | tuple[str, ...] | None]]

# Default rules for a ('data', 'fsdp', 'tensor') mesh: FSDP shards the embed dimension of weights,
# tensor parallelism shards heads, MLP width and vocab; activations shard batch over data+fsdp.
DEFAULT_RULES: Rules = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("vocab", "tensor"),
    ("length", None),
    ("patch", None),
    ("head_dim", None),
)

_ACTIVE: contextvars.ContextVar = contextvars.ContextVar("rewatch_axis_rules", default=None)


@contextlib.contextmanager
def axis_rules(mesh: jax.sharding.Mesh, rules: Rules = DEFAULT_RULES):
  token = _ACTIVE.set((mesh, dict(rules)))
  try:
    yield
  finally:
    _ACTIVE.reset(token)


def logical_to_spec(names: Sequence[str | None], rules: Rules | dict,
                    mesh_axes: Sequence[str] | None = None) -> PartitionSpec:
  """Mesh axes absent from `mesh_axes` (e.g. no 'tensor' axis) leave that dimension unsharded."""
  table = dict(rules)
  used, out = set(), []
  for name in names:
    axes = table.get(name) if name is not None else None
    axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
    axes = tuple(a for a in axes if a not in used and (mesh_axes is None or a in mesh_axes))
    used.update(axes)
    out.append(None if not axes else axes[0] if len(axes) == 1 else axes)
  return PartitionSpec(*out)


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
  active = _ACTIVE.get()
  if active is None:
    return x
  mesh, rules = active
  return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, logical_to_spec(names, rules, mesh.axis_names)))


def fit_spec(spec: PartitionSpec, shape: Sequence[int], axis_sizes: Mapping[str, int]) -> PartitionSpec:
  """`spec` with each dimension sharded only over the longest prefix of its mesh axes whose sizes
  divide it (JAX places no array split unevenly)."""
  out = []
  for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
    while axes and dim % math.prod(axis_sizes[a] for a in axes):
      axes = axes[:-1]
    out.append(None if not axes else axes[0] if len(axes) == 1 else axes)
  return PartitionSpec(*out)


_WARNED: set[str] = set()


def param_shardings(state: nnx.State, mesh: jax.sharding.Mesh, rules: Rules = DEFAULT_RULES):
  """A NamedSharding for every variable of an nnx state, from its `logical_axes` metadata.

  A dimension its mesh axes do not divide is replicated along them instead, with a warning, so
  every mesh runs: e.g. the 3B/7B vision MLP's width 3420 on tensor=8 (the 7B's 0.42B vision MLP
  parameters are then split by fsdp alone; tensor=4 splits them)."""
  uneven = set()
  def one(path, v):
    names = getattr(v, "logical_axes", None) or (None,) * len(v.shape)
    spec = logical_to_spec(names, rules, mesh.axis_names)
    fitted = fit_spec(spec, v.shape, mesh.shape)
    if fitted != spec:
      name = re.sub(r"\.\d+\.", ".*.", ".".join(str(getattr(k, "key", k)) for k in path))
      uneven.add(f"{name} {tuple(v.shape)}: {spec} -> {fitted}")
    return NamedSharding(mesh, fitted)
  out = jax.tree_util.tree_map_with_path(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))
  message = (f"mesh {dict(mesh.shape)} does not divide these parameters; replicated along those axes: "
             + "; ".join(sorted(uneven)))
  if uneven and message not in _WARNED:
    _WARNED.add(message)
    logging.getLogger(__name__).warning(message)
  return out
