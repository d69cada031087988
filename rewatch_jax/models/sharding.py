"""Logical axis names -> mesh axes (the MaxText way): the model names axes, never devices.

Every parameter carries `logical_axes` metadata (a tuple of names, one per dimension) and key
activations pass through `constrain(x, names)`. Outside an `axis_rules(mesh, rules)` context
`constrain` is the identity, so the model runs unsharded with no mesh at all.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Sequence

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


def param_shardings(state: nnx.State, mesh: jax.sharding.Mesh, rules: Rules = DEFAULT_RULES):
  """A NamedSharding for every variable of an nnx state, from its `logical_axes` metadata."""
  def one(v):
    names = getattr(v, "logical_axes", None) or (None,) * len(v.shape)
    return NamedSharding(mesh, logical_to_spec(names, rules, mesh.axis_names))
  return jax.tree.map(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))
