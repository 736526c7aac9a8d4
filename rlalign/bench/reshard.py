"""Benchmark: the cost of resharding policy weights into a sampler's own layout.

  XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m rlalign.parallel.bench_reshard

A learner in FSDP layout (1, 8, 1) hands its weights to a sampler in a tensor-parallel layout
(4, 1, 2) over the same devices, as ``sampler_layout.separate`` does every RL step. Prints the
median time per reshard, the bytes each device receives, and the same copy into the layout
the weights already have (the baseline: no movement). The trainer uses ``jax.device_put``;
the same move as a jitted identity with ``out_shardings`` (XLA collectives) is timed beside
it. On fake CPU devices this measures
host memory copies, not interconnect bandwidth; run it on the target to size a pod.
"""
from __future__ import annotations

import argparse
import math
import statistics
import time

import jax
import numpy as np

from rlalign.models import transformer as tfm
from rlalign.parallel import mesh as mesh_lib
from rlalign.parallel.sharding import ShardingPlan


def _median_seconds(fn, repeats: int) -> float:
  fn()  # warm up: compiles the transfer
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--d_model", type=int, default=1024)
  parser.add_argument("--n_layers", type=int, default=8)
  parser.add_argument("--learner", default="1,8,1")
  parser.add_argument("--sampler", default="4,1,2")
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args()
  cfg = tfm.ModelConfig(vocab_size=32768, d_model=args.d_model, n_layers=args.n_layers,
                        n_heads=16, n_kv_heads=8, head_dim=args.d_model // 16,
                        d_ff=4 * args.d_model)
  plans = {name: ShardingPlan(mesh_lib.make_mesh(mesh_lib.MeshConfig(
      ici=tuple(int(x) for x in spec.split(",")))), mesh_lib.DEFAULT_RULES)
      for name, spec in (("learner", args.learner), ("sampler", args.sampler))}
  abstract = tfm.abstract_params(cfg)
  shardings = {k: p.params(tfm.logical_axes(cfg), abstract) for k, p in plans.items()}
  params = jax.jit(lambda r: tfm.init(cfg, r), out_shardings=shardings["learner"])(
      jax.random.key(0))
  nbytes = sum(x.nbytes for x in jax.tree.leaves(params))

  def per_device(which):
    return sum(math.prod(s.shard_shape(a.shape)) * np.dtype(a.dtype).itemsize
               for a, s in zip(jax.tree.leaves(abstract), jax.tree.leaves(shardings[which])))

  copy = lambda which: jax.block_until_ready(jax.device_put(params, shardings[which]))
  to_sampler = jax.jit(lambda p: p, out_shardings=shardings["sampler"])
  baseline = _median_seconds(lambda: copy("learner"), args.repeats)
  reshard = _median_seconds(lambda: copy("sampler"), args.repeats)
  compiled = _median_seconds(lambda: jax.block_until_ready(to_sampler(params)), args.repeats)
  print(f"| model | learner {args.learner} | sampler {args.sampler} | reshard (device_put) "
        "| reshard (jitted collectives) | same layout |")
  print("|---|---|---|---|---|---|")
  print(f"| {tfm.count_params(params) / 1e6:.0f}M params, {nbytes / 2**20:.0f} MiB "
        f"| {per_device('learner') / 2**20:.1f} MiB/device "
        f"| {per_device('sampler') / 2**20:.1f} MiB/device "
        f"| {reshard * 1e3:.1f} ms ({nbytes / reshard / 2**30:.2f} GiB/s) "
        f"| {compiled * 1e3:.1f} ms | {baseline * 1e3:.2f} ms |")


if __name__ == "__main__":
  main()
