"""Efficiency against physical limits: matmul peak, update-step MFU, compilations per shape
bucket, and peak memory against the theoretical minimum.

  python -m rlalign.bench.efficiency --root=/tmp/rlalign_bench --out=e.json

Every figure is measured in this one process, so the MFU's peak and the step it divides come
from the same machine in the same minute.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import statistics
import time
from typing import Any, Dict, List, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from rlalign.bench import fixtures, flops
from rlalign.bench import grpo as bench_grpo
from rlalign.bench import settings as S
from rlalign.bench.peers.common import write_json

PEAK_SHAPES = ((2048, 2048, 2048), (4096, 1024, 4096), (1024, 4096, 1024))


def _time(fn, repeats: int) -> List[float]:
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t)
  return times


def peak_matmul(dtype: str = "float32", repeats: int = 5) -> Dict[str, Any]:
  """The best FLOP/s of a few large jitted matmuls: the denominator of every MFU here."""
  best, per_shape = 0.0, {}
  for m, k, n in PEAK_SHAPES:
    a = jnp.ones((m, k), dtype)
    b = jnp.ones((k, n), dtype)
    f = jax.jit(jnp.matmul)
    jax.block_until_ready(f(a, b))
    rate = 2.0 * m * k * n / statistics.median(_time(lambda: f(a, b), repeats))
    per_shape[f"{m}x{k}x{n}"] = rate
    best = max(best, rate)
  return {"flops_per_s": best, "per_shape": per_shape, "dtype": dtype}


def update_mfu(root: str, model: str = "l4_d512", batch: int = 8, seq: int = 512,
               remat: bool = False, dtype: str = "float32", repeats: int = 3
               ) -> Dict[str, Any]:
  """Time of one GRPO update (forward, backward, Adam) on ``batch`` x ``seq`` tokens.

  The program is :func:`rlalign.rl.iteration.learn` with one minibatch and no reference, on
  rollouts of ``seq / 2`` prompt and ``seq / 2`` completion tokens: what the RL step runs after
  sampling.
  """
  from rlalign.models import hf
  from rlalign.rl import iteration
  from rlalign.rl import state as state_lib
  model_cfg, params = hf.load_hf_checkpoint(fixtures.write_model(root, model))
  setting = S.GRPOSetting("mfu", model, prompts_per_step=batch // 2, group_size=2,
                          new_tokens=seq // 2, prompt_len=seq // 2, kl_coef=0.0)
  spec = bench_grpo.iteration_spec(setting, model_cfg, remat=remat, dtype=dtype,
                                   reference=False)
  rng = np.random.default_rng(0)
  P = N = seq // 2
  ids = lambda n: jnp.asarray(rng.integers(S.FIRST_WORD_ID, model_cfg.vocab_size, (batch, n)),
                              jnp.int32)
  rollouts = {
      "prompt_tokens": ids(P), "prompt_mask": jnp.ones((batch, P), bool),
      "completion_tokens": ids(N), "completion_mask": jnp.ones((batch, N), bool),
      "completion_stopped": jnp.zeros((batch,), bool),
      "logprobs": jnp.asarray(-rng.random((batch, N)) * 5, jnp.float32),
  }
  scores = {bench_grpo.REWARD: jnp.asarray(rng.random(batch), jnp.float32)}
  learn = jax.jit(functools.partial(iteration.learn, spec=spec), donate_argnums=(0,))
  holder = [state_lib.init_state({"policy": params}, spec.optimizers)]

  def one():
    holder[0], metrics = learn(holder[0], rollouts, scores, jax.random.key(0), {})
    return metrics

  t = time.perf_counter()
  jax.block_until_ready(one())
  compile_and_first = time.perf_counter() - t
  median = statistics.median(_time(one, repeats))
  work = flops.update_flops(model_cfg, batch, seq)
  return {"model": model, "params": int(sum(x.size for x in jax.tree.leaves(params))),
          "matmul_params": flops.matmul_params(model_cfg), "batch": batch, "seq": seq,
          "remat": remat, "dtype": dtype, "median_s": median,
          "first_call_s": compile_and_first, "flops": work,
          "flops_per_s_6n": work["dense_6n"] / median,
          "flops_per_s_with_attention": work["total"] / median}


def compile_count(root: str, steps: int = 100, buckets: Tuple[int, ...] = (8, 16, 32),
                  seed: int = 0) -> Dict[str, Any]:
  """Compilations over ``steps`` RL iterations with prompts of varied lengths, bucketed.

  Prompts of 3 to 32 tokens arrive left-padded to 32, as the data pipeline gives them;
  ``rlalign.data.buckets`` cuts each batch to its bucket. The target is one compilation per
  bucket, however many steps run.
  """
  from rlalign import profiling
  from rlalign.data import buckets as buckets_lib
  from rlalign.models import hf
  from rlalign.rl import iteration
  from rlalign.rl import state as state_lib
  setting = S.GRPO_SETTINGS["tiny"]
  model_cfg, params = hf.load_hf_checkpoint(fixtures.write_model(root, setting.model))
  spec = bench_grpo.iteration_spec(setting, model_cfg)
  frozen = {"reference": jax.tree.map(lambda x: x.copy(), params)}
  state = state_lib.init_state({"policy": params}, spec.optimizers)
  step = iteration.make_rl_step(spec)
  rng = np.random.default_rng(seed)
  width = buckets[-1]
  per_bucket: Dict[int, Dict[str, int]] = {}
  key = jax.random.key(0)  # made before counting: the key constructor compiles once too
  from tqdm import tqdm
  with profiling.count_compilations() as compiles:
    for i in tqdm(range(steps), desc="compile count", leave=False):
      n = setting.prompts_per_step
      # Each batch's longest prompt falls in a random bucket, so every bucket recurs.
      b = int(rng.integers(len(buckets)))
      low = buckets[b - 1] + 1 if b else 3
      lengths = rng.integers(3, buckets[b] + 1, n)
      lengths[0] = rng.integers(low, buckets[b] + 1)
      tokens = np.zeros((n, width), np.int32)
      mask = np.zeros((n, width), bool)
      for r, length in enumerate(lengths):
        tokens[r, width - length:] = rng.integers(S.FIRST_WORD_ID, model_cfg.vocab_size, length)
        mask[r, width - length:] = True
      batch = buckets_lib.trim_prompts(
          {"prompt_tokens": tokens, "prompt_mask": mask,
           "answer_tokens": np.zeros((n, 1), np.int32), "answer_mask": np.zeros((n, 1), bool)},
          buckets)
      before = compiles.count
      state, metrics = step(state, batch, key, frozen)
      jax.block_until_ready(metrics)
      entry = per_bucket.setdefault(batch["prompt_tokens"].shape[1], {"steps": 0, "compiles": 0})
      entry["steps"] += 1
      entry["compiles"] += compiles.count - before
  return {"steps": steps, "buckets": list(buckets),
          "per_bucket": {str(k): v for k, v in sorted(per_bucket.items())},
          "total_compiles": compiles.count,
          "one_per_bucket": all(v["compiles"] == 1 for v in per_bucket.values())}


def memory(root: str, setting_name: str, remat: bool = False) -> Dict[str, Any]:
  """XLA's peak bytes for the fused RL step against the theoretical minimum.

  The minimum is what must be resident at once: params, gradients, Adam's two moments, the
  reference and the KV cache of one sampling call. XLA's figure is the compiled program's
  arguments + outputs - aliased (donated) buffers + temporaries, from ``memory_analysis``.
  """
  from rlalign.models import hf
  from rlalign.models import transformer as tfm
  from rlalign.rl import iteration
  from rlalign.rl import state as state_lib
  setting = S.GRPO_SETTINGS[setting_name]
  model_cfg = hf.model_config_from_dir(fixtures.write_model(root, setting.model))
  spec = bench_grpo.iteration_spec(setting, model_cfg, remat=remat)
  abstract = tfm.abstract_params(model_cfg)
  state = jax.eval_shape(lambda p: state_lib.init_state({"policy": p}, spec.optimizers), abstract)
  batch = {"prompt_tokens": jax.ShapeDtypeStruct((setting.prompts_per_step, setting.prompt_len),
                                                 jnp.int32),
           "prompt_mask": jax.ShapeDtypeStruct((setting.prompts_per_step, setting.prompt_len),
                                               bool),
           "answer_tokens": jax.ShapeDtypeStruct((setting.prompts_per_step, 1), jnp.int32),
           "answer_mask": jax.ShapeDtypeStruct((setting.prompts_per_step, 1), bool)}
  rng = jax.eval_shape(lambda: jax.random.key(0))
  fused = jax.jit(functools.partial(iteration.rl_step, spec=spec), donate_argnums=(0,))
  compiled = fused.lower(state, batch, rng, {"reference": abstract}).compile()
  m = compiled.memory_analysis()
  nbytes = lambda tree: sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))
  params = nbytes(abstract)
  kv = (2 * model_cfg.n_layers * setting.rollouts * model_cfg.n_kv_heads
        * (setting.prompt_len + setting.new_tokens) * model_cfg.head_dim
        * jnp.dtype(model_cfg.dtype).itemsize)
  minimum = {"params": params, "grads": params,
             "optimizer": nbytes(state["roles"]["policy"]["opt_state"]),
             "reference": params, "kv_cache": kv}
  minimum["total"] = sum(minimum.values())
  peak = (m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
          + m.temp_size_in_bytes)
  return {"setting": setting_name, "remat": remat, "minimum_bytes": minimum,
          "xla": {"arguments": m.argument_size_in_bytes, "outputs": m.output_size_in_bytes,
                  "aliased": m.alias_size_in_bytes, "temp": m.temp_size_in_bytes,
                  "peak": peak},
          "peak_over_minimum": peak / minimum["total"]}


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--root", required=True)
  parser.add_argument("--out", required=True)
  parser.add_argument("--parts", default="peak,mfu,compiles,memory")
  parser.add_argument("--compile_steps", type=int, default=100)
  args = parser.parse_args(argv)
  parts = args.parts.split(",")
  out: Dict[str, Any] = {}
  if "peak" in parts or "mfu" in parts:
    # Each dtype against its own peak: bfloat16 matmuls run at a different rate.
    out["peak"] = {dtype: peak_matmul(dtype) for dtype in ("float32", "bfloat16")}
    for dtype, p in out["peak"].items():
      print(f"peak matmul ({dtype}): {p['flops_per_s'] / 1e9:.1f} GFLOP/s")
  if "mfu" in parts:
    out["mfu"] = []
    for remat, dtype in ((False, "float32"), (True, "float32"), (False, "bfloat16"),
                         (True, "bfloat16")):
      r = update_mfu(args.root, remat=remat, dtype=dtype)
      peak = out["peak"][dtype]["flops_per_s"]
      r["mfu_6n"] = r["flops_per_s_6n"] / peak
      r["mfu_with_attention"] = r["flops_per_s_with_attention"] / peak
      out["mfu"].append(r)
      print(f"update MFU ({dtype}, remat={remat}): {r['mfu_6n']:.1%} (6N), "
            f"{r['mfu_with_attention']:.1%} with attention, {r['median_s'] * 1e3:.0f} ms")
  if "compiles" in parts:
    out["compiles"] = compile_count(args.root, steps=args.compile_steps)
    print(f"compilations over {args.compile_steps} steps: {out['compiles']['per_bucket']}")
  if "memory" in parts:
    out["memory"] = [memory(args.root, s, remat) for s in ("medium", "gen_heavy")
                     for remat in (False, True)]
    for r in out["memory"]:
      print(f"memory {r['setting']}{' remat' if r['remat'] else ''}: XLA peak {r['xla']['peak'] / 2**20:.1f} MiB, minimum "
            f"{r['minimum_bytes']['total'] / 2**20:.1f} MiB ({r['peak_over_minimum']:.2f}x)")
  write_json(args.out, out)


if __name__ == "__main__":
  main()
