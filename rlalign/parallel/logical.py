"""Logical axis names and their mapping onto a device mesh.

Model code names the role of every dimension ("batch", "embed", "mlp", ...). Which mesh axis,
if any, a logical name is split over is config data: a tuple of ``(logical, mesh_axis)`` rules
activated with :func:`axis_rules`. Without active rules every constraint is a no-op, so the
same model code runs unsharded in tests.
"""
from __future__ import annotations

import contextlib
import contextvars
from typing import Iterator, Optional, Sequence, Tuple

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

Rules = Tuple[Tuple[str, Optional[str]], ...]

_ACTIVE: contextvars.ContextVar[Optional[Tuple[Mesh, Rules]]] = contextvars.ContextVar(
    "rlalign_axis_rules", default=None)


@contextlib.contextmanager
def axis_rules(mesh: Mesh, rules: Rules) -> Iterator[None]:
  """Activates ``rules`` on ``mesh`` for activation constraints traced inside the block."""
  token = _ACTIVE.set((mesh, tuple(rules)))
  try:
    yield
  finally:
    _ACTIVE.reset(token)


def logical_to_spec(axes: Sequence[Optional[str]], rules: Rules) -> PartitionSpec:
  """Maps logical axis names to a PartitionSpec; a name no rule covers raises."""
  table = dict(rules)
  spec = []
  used = set()
  for name in axes:
    if name is None:
      spec.append(None)
      continue
    if name not in table:
      raise KeyError(f"logical axis {name!r} has no sharding rule; rules cover {sorted(table)}")
    mesh_axis = table[name]
    # A mesh axis may shard only one dimension of an array.
    if mesh_axis is not None and mesh_axis in used:
      mesh_axis = None
    if mesh_axis is not None:
      used.add(mesh_axis)
    spec.append(mesh_axis)
  return PartitionSpec(*spec)


def constrain(x: jax.Array, axes: Sequence[Optional[str]]) -> jax.Array:
  """Constrains an activation's sharding by logical names, when rules are active."""
  active = _ACTIVE.get()
  if active is None:
    return x
  mesh, rules = active
  if len(axes) != x.ndim:
    raise ValueError(f"logical axes {tuple(axes)} do not match an array of rank {x.ndim}")
  return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, logical_to_spec(axes, rules)))
