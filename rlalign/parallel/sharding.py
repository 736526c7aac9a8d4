"""How the train state, batches and frozen roles are laid out over a mesh.

A :class:`ShardingPlan` is the one place that turns logical axis names into shardings. The
trainer asks it for the shardings of params, optimizer state and batches, creates arrays
directly in those layouts (``jit(init, out_shardings=...)``) and jits every program with
explicit in/out shardings.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import jax
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from rlalign.parallel import mesh as mesh_lib
from rlalign.parallel.logical import Rules, logical_to_spec


@dataclasses.dataclass(frozen=True)
class ShardingPlan:
  mesh: Mesh
  rules: Rules

  @property
  def replicated(self) -> NamedSharding:
    return NamedSharding(self.mesh, PartitionSpec())

  @property
  def batch_ways(self) -> int:
    """How many ways the batch dimension is split."""
    spec = logical_to_spec(("batch",), self.rules)[0]
    axes = () if spec is None else (spec if isinstance(spec, tuple) else (spec,))
    return math.prod(self.mesh.shape[a] for a in axes)

  def check_batch(self, size: int, key: str) -> None:
    if size % self.batch_ways:
      raise ValueError(f"{key} ({size}) must divide over the mesh's batch axes "
                       f"({logical_to_spec(('batch',), self.rules)[0]}, {self.batch_ways} ways)")

  def params(self, axes_tree, abstract_params) -> Any:
    return mesh_lib.tree_shardings(self.mesh, axes_tree, abstract_params, self.rules, "param")

  def optimizer_state(self, param_shardings, abstract_params,
                      optimizer: optax.GradientTransformation) -> Any:
    """Shardings of ``optimizer.init(params)``: moments follow their params."""
    abstract_opt = jax.eval_shape(optimizer.init, abstract_params)
    return optax.tree_utils.tree_map_params(
        optimizer, lambda _, sharding: sharding, abstract_opt, param_shardings,
        transform_non_params=lambda _: self.replicated)

  def train_state(self, param_shardings: Mapping[str, Any], abstract_params: Mapping[str, Any],
                  optimizers: Mapping[str, optax.GradientTransformation]) -> Mapping[str, Any]:
    """Shardings of ``{"step", "roles": {role: {"params", "opt_state"}}}`` (rl/state.py),
    given each trained role's param shardings, abstract params and optimizer."""
    return {"step": self.replicated,
            "roles": {name: {"params": sh,
                             "opt_state": self.optimizer_state(sh, abstract_params[name],
                                                               optimizers[name])}
                      for name, sh in param_shardings.items()}}

  def batch(self, tree) -> Any:
    """Every array split along its leading (batch) dimension."""
    def one(x):
      return NamedSharding(self.mesh, logical_to_spec(("batch",) + (None,) * (x.ndim - 1),
                                                      self.rules))
    return jax.tree.map(one, tree)

  def put_process_batch(self, local: Mapping[str, np.ndarray]) -> Mapping[str, jax.Array]:
    """Assembles global arrays from each process's rows of the global batch."""
    return {k: jax.make_array_from_process_local_data(s, v)
            for (k, v), s in zip(local.items(), self.batch(list(local.values())))}

  def put_global_batch(self, batch: Mapping[str, np.ndarray]) -> Mapping[str, jax.Array]:
    """Places a batch that every process holds in full (eval data) into the batch layout."""
    out = {}
    for (k, v), s in zip(batch.items(), self.batch(list(batch.values()))):
      v = np.asarray(v)
      out[k] = jax.make_array_from_callback(v.shape, s, lambda index, v=v: v[index])
    return out
