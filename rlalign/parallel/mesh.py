"""Device meshes and logical-axis rules, from config.

A mesh has named axes (``data``, ``fsdp``, ``tensor`` by default; add more freely). Each axis
has a size within a slice (ICI) and a size across slices (DCN); one ICI size may be -1, meaning
"whatever devices are left". Rules map each logical axis name to a tuple of mesh axes (empty:
replicated). They are config data: model code only ever names logical axes.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Dict, Optional, Sequence, Tuple

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from rlalign.parallel.logical import Rules, logical_to_spec

# FSDP over "fsdp", tensor parallelism over "tensor", the batch over both data axes.
DEFAULT_RULES: Rules = (
    ("batch", ("data", "fsdp")),
    ("length", ()),
    ("cache_length", ()),
    ("embed", ("fsdp",)),
    ("vocab", ("tensor",)),
    ("q_heads", ("tensor",)),
    ("kv_heads", ("tensor",)),
    ("head_dim", ()),
    ("mlp", ("tensor",)),
    ("layers", ()),
    ("lora_rank", ()),
    ("scalar_heads", ()),
)


@dataclasses.dataclass(frozen=True)
class MeshConfig:
  axes: Tuple[str, ...] = ("data", "fsdp", "tensor")
  ici: Tuple[int, ...] = (-1, 1, 1)  # sizes within a slice; one may be -1
  dcn: Tuple[int, ...] = (1, 1, 1)   # sizes across slices (multi-slice)
  rules: Tuple[Tuple[str, Tuple[str, ...]], ...] = DEFAULT_RULES

  def validate(self, prefix: str = "mesh") -> None:
    if len(set(self.axes)) != len(self.axes):
      raise ValueError(f"{prefix}.axes has duplicates: {self.axes}")
    for name in ("ici", "dcn"):
      sizes = getattr(self, name)
      if len(sizes) != len(self.axes):
        raise ValueError(f"{prefix}.{name} has {len(sizes)} sizes for {len(self.axes)} axes "
                         f"{self.axes}")
      if any(s == 0 or s < -1 for s in sizes):
        raise ValueError(f"{prefix}.{name} sizes must be positive or -1, got {sizes}")
    if sum(s == -1 for s in self.ici) > 1:
      raise ValueError(f"{prefix}.ici may have at most one -1, got {self.ici}")
    if any(s == -1 for s in self.dcn):
      raise ValueError(f"{prefix}.dcn sizes must be explicit, got {self.dcn}")
    for logical, mesh_axes in self.rules:
      for axis in mesh_axes:
        if axis not in self.axes:
          raise ValueError(f"{prefix}.rules maps {logical!r} to mesh axis {axis!r}, which is "
                           f"not in {prefix}.axes {self.axes}")

  def shape(self, num_devices: int) -> Dict[str, int]:
    """Resolves -1 and checks the product against ``num_devices``."""
    slices = math.prod(self.dcn)
    if num_devices % slices:
      raise ValueError(f"mesh.dcn {self.dcn} asks for {slices} slices, which does not divide "
                       f"the {num_devices} devices")
    per_slice = num_devices // slices
    known = math.prod(s for s in self.ici if s != -1)
    ici = list(self.ici)
    if -1 in ici:
      if per_slice % known:
        raise ValueError(f"mesh.ici {self.ici}: the fixed sizes (product {known}) do not divide "
                         f"the {per_slice} devices per slice")
      ici[ici.index(-1)] = per_slice // known
    elif known != per_slice:
      raise ValueError(f"mesh.ici {self.ici} x mesh.dcn {self.dcn} covers "
                       f"{known * slices} devices, but there are {num_devices}")
    return {a: i * d for a, i, d in zip(self.axes, ici, self.dcn)}


def make_mesh(cfg: MeshConfig, devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
  cfg.validate()
  devices = list(jax.devices() if devices is None else devices)
  shape = cfg.shape(len(devices))
  ici = [s // d for s, d in zip(shape.values(), cfg.dcn)]
  if math.prod(cfg.dcn) > 1:
    grid = mesh_utils.create_hybrid_device_mesh(ici, list(cfg.dcn), devices)
  else:
    try:
      grid = mesh_utils.create_device_mesh(ici, devices)
    except (NotImplementedError, ValueError, AssertionError):
      grid = np.array(devices).reshape(ici)  # hosts without a known topology (CPU)
  return Mesh(grid, cfg.axes)


def sharding_for(mesh: Mesh, axes: Sequence[Optional[str]], rules: Rules) -> NamedSharding:
  return NamedSharding(mesh, logical_to_spec(axes, rules))


def tree_shardings(mesh: Mesh, axes_tree, abstract_tree, rules: Rules, what: str = "param"):
  """NamedShardings for a pytree given its logical axes, checking every dimension divides."""
  def one(path, axes, leaf):
    name = jax.tree_util.keystr(path, simple=True, separator="/")
    if len(axes) != len(leaf.shape):
      raise ValueError(f"{what} {name}: logical axes {axes} do not match shape {leaf.shape}")
    try:
      spec = logical_to_spec(axes, rules)
    except KeyError as e:
      raise KeyError(f"{what} {name}: {e.args[0]}") from None
    for dim, (size, entry) in enumerate(zip(leaf.shape, spec)):
      mesh_axes = () if entry is None else (entry if isinstance(entry, tuple) else (entry,))
      ways = math.prod(mesh.shape[a] for a in mesh_axes)
      if size % ways:
        raise ValueError(f"{what} {name}: dimension {dim} ({axes[dim]}) of size {size} does "
                         f"not divide over mesh axes {mesh_axes} of total size {ways}")
    return NamedSharding(mesh, spec)
  return jax.tree_util.tree_map_with_path(one, axes_tree, abstract_tree,
                                          is_leaf=lambda x: isinstance(x, tuple))


def sharding_report(abstract_tree, shardings, title: str = "params") -> str:
  """One line per array: shape, PartitionSpec and bytes held by each device."""
  rows, total_global, total_device = [], 0, 0
  flat = jax.tree_util.tree_flatten_with_path(abstract_tree)[0]
  for (path, leaf), sharding in zip(flat, jax.tree.leaves(shardings)):
    nbytes = math.prod(leaf.shape) * np.dtype(leaf.dtype).itemsize
    per_device = math.prod(sharding.shard_shape(leaf.shape)) * np.dtype(leaf.dtype).itemsize
    total_global += nbytes
    total_device += per_device
    rows.append(f"  {jax.tree_util.keystr(path, simple=True, separator='/'):<28} "
                f"{str(tuple(leaf.shape)):<22} {str(sharding.spec):<42} {_mib(per_device):>10}")
  header = (f"{title}: {_mib(total_global)} in all, {_mib(total_device)} per device\n"
            f"  {'name':<28} {'shape':<22} {'spec':<42} {'per device':>10}")
  return "\n".join([header, *rows])


def _mib(n: int) -> str:
  return f"{n / 2**20:.2f} MiB"
