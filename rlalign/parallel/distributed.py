"""Joining the JAX multi-controller runtime (``jax.distributed``).

Every host runs the same program; ``jax.distributed.initialize`` connects them. Where the
cluster is known, JAX finds the coordinator itself: Cloud TPU VMs (a pod slice's workers) and
SLURM jobs with several tasks. Elsewhere, give ``--coordinator_address``, ``--num_processes``
and ``--process_id`` (or the ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES`` and
``JAX_PROCESS_ID`` environment variables). A plain single-host run initialises nothing.
"""
from __future__ import annotations

import os
from typing import Mapping, Optional

import jax


def _cluster_kind(env: Mapping[str, str]) -> Optional[str]:
  """The auto-detectable multi-host environment we are in, if any."""
  if int(env.get("SLURM_NTASKS", "1") or 1) > 1 and "SLURM_JOB_ID" in env:
    return "slurm"
  hosts = env.get("TPU_WORKER_HOSTNAMES", "")
  if len([h for h in hosts.split(",") if h]) > 1 or "MEGASCALE_COORDINATOR_ADDRESS" in env:
    return "tpu"
  return None


def initialize(coordinator_address: Optional[str] = None, num_processes: Optional[int] = None,
               process_id: Optional[int] = None,
               env: Optional[Mapping[str, str]] = None) -> str:
  """Initialises ``jax.distributed`` when this is a multi-process run; returns how.

  Must run before anything touches a JAX device.
  """
  env = os.environ if env is None else env
  address = coordinator_address or env.get("JAX_COORDINATOR_ADDRESS")
  count = num_processes if num_processes is not None else env.get("JAX_NUM_PROCESSES")
  index = process_id if process_id is not None else env.get("JAX_PROCESS_ID")
  explicit = [address, count, index]
  if any(v is not None for v in explicit):
    if any(v is None for v in explicit):
      raise ValueError("a multi-process run needs all of coordinator_address, num_processes "
                       f"and process_id; got {address!r}, {count!r}, {index!r}")
    count, index = int(count), int(index)
    if not 0 <= index < count:
      raise ValueError(f"process_id {index} is outside [0, num_processes={count})")
    if count == 1:
      return "single process"
    _use_gloo_on_cpu()
    jax.distributed.initialize(address, num_processes=count, process_id=index)
    return f"process {index} of {count} via {address}"
  kind = _cluster_kind(env)
  if kind is None:
    return "single process"
  _use_gloo_on_cpu()
  jax.distributed.initialize()  # JAX reads the cluster's own environment
  return f"process {jax.process_index()} of {jax.process_count()} ({kind})"


def _use_gloo_on_cpu() -> None:
  # Cross-process collectives between CPU devices need a backend; gloo ships with jaxlib.
  # The setting touches only CPU devices, so it is harmless on accelerator hosts.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
