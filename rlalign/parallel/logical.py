"""Logical axis names and their mapping onto a device mesh.

Model code names the role of every dimension ("batch", "embed", "mlp", ...). Which mesh axis,
if any, a logical name is split over is config data: a tuple of ``(logical, mesh_axis)`` rules
activated with :func:`axis_rules`. Without active rules every constraint is a no-op, so the
same model code runs unsharded in tests.
"""
from __future__ import annotations

import contextlib
import contextvars
from typing import Iterator, Optional, Sequence, Tuple, Union

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

# (logical name, mesh axes): the mesh axes are a tuple (empty: replicated); a single name or
# None are accepted too.
Rules = Tuple[Tuple[str, Union[None, str, Tuple[str, ...]]], ...]

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
  """Maps logical axis names to a PartitionSpec; a name no rule covers raises.

  A mesh axis shards at most one dimension of an array: the first dimension whose rule
  names it takes it, and later dimensions that name it again stay unsplit along it. So an
  activation [batch, length, embed] with batch -> (data, fsdp) and embed -> (fsdp,) is split
  over data x fsdp by batch only.
  """
  table = dict(rules)
  spec = []
  used = set()
  for name in axes:
    if name is None:
      spec.append(None)
      continue
    if name not in table:
      raise KeyError(f"logical axis {name!r} has no sharding rule; rules cover {sorted(table)}")
    mesh_axes = table[name]
    if mesh_axes is None:
      mesh_axes = ()
    elif isinstance(mesh_axes, str):
      mesh_axes = (mesh_axes,)
    free = tuple(a for a in mesh_axes if a not in used)
    used.update(free)
    spec.append(None if not free else free[0] if len(free) == 1 else free)
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
