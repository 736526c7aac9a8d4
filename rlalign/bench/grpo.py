"""rlalign's GRPO iteration on a benchmark setting, timed step by step.

  python -m rlalign.bench.grpo --root=/tmp/rlalign_bench --setting=medium --out=r.json

The same workload as the peers in ``rlalign/bench/peers/``: the checkpoint and prompts that
:mod:`rlalign.bench.fixtures` wrote, the setting's group size, generation length, learning
rate, KL coefficient and loss aggregation, Adam without clipping, and one update per
iteration. The iteration is :func:`rlalign.rl.iteration.make_rl_step`, the program that
``rlalign.main`` trains with: sampling, reference scoring, the in-graph reward and the update
are one jitted program with the state donated.
"""
from __future__ import annotations

import time

_START = time.time()

import json  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
from typing import Any, Dict, Optional  # noqa: E402

from rlalign.bench import settings as S  # noqa: E402
from rlalign.bench.peers import common  # noqa: E402
from rlalign.bench.peers.common import write_json  # noqa: E402

REWARD = "bench/even_token_fraction"


def _register_reward() -> None:
  import jax.numpy as jnp
  from rlalign.rewards import base as reward_base
  if REWARD in reward_base.names():
    return

  @reward_base.in_graph(REWARD)
  def even_token_fraction(rollouts, roles=None, settings=None):
    """settings.even_token_fraction, in jnp on token ids."""
    mask = rollouts["completion_mask"].astype(jnp.float32)
    even = (rollouts["completion_tokens"] % 2 == 0).astype(jnp.float32)
    return (even * mask).sum(-1) / jnp.maximum(mask.sum(-1), 1.0)


def iteration_spec(setting: S.GRPOSetting, model_cfg, *, remat: bool = False,
                   dtype: Optional[str] = None, reference: bool = True):
  """The :class:`IterationSpec` of ``setting`` on a loaded model config."""
  import dataclasses
  import optax
  from rlalign.objectives import base as obj_base
  from rlalign.objectives import grpo
  from rlalign.rl import iteration
  from rlalign.sampling import sampler
  _register_reward()
  model_cfg = dataclasses.replace(model_cfg, remat=remat, dtype=dtype or model_cfg.dtype)
  from rlalign.rewards.base import RewardTerm
  return iteration.single_policy_spec(
      model_cfg,
      sampler.SamplingConfig(max_new_tokens=setting.new_tokens,
                             temperature=setting.temperature, stop_tokens=()),
      iteration.RLConfig(batch_size=setting.rollouts, group_size=setting.group_size,
                         epochs=1, minibatches=1, rewards=(RewardTerm(REWARD),)),
      obj_base.get("grpo"),
      grpo.GRPOConfig(clip_eps=setting.clip_eps, kl_coef=setting.kl_coef,
                      aggregation=setting.aggregation),
      # Adam without clipping or weight decay: what the peers are configured to run.
      optax.adam(setting.learning_rate),
      pad_id=S.PAD_ID, reference=reference)


def prompt_batches(root: str, setting: S.GRPOSetting):
  """The setting's prompt batches as rlalign batches (no reference answers)."""
  import numpy as np
  with open(os.path.join(root, "prompts", f"{setting.name}.json")) as f:
    ids = np.asarray(json.load(f)["ids"], np.int32)
  n = setting.prompts_per_step
  for i in range(len(ids) // n):
    tokens = ids[i * n:(i + 1) * n]
    yield {"prompt_tokens": tokens, "prompt_mask": np.ones_like(tokens, bool),
           "answer_tokens": np.zeros((n, 1), np.int32),
           "answer_mask": np.zeros((n, 1), bool)}


def run(root: str, setting: S.GRPOSetting, steps: int, start: float, *, remat: bool = False,
        dtype: Optional[str] = None) -> Dict[str, Any]:
  import jax
  import numpy as np
  from rlalign import profiling
  from rlalign.models import hf
  from rlalign.rl import iteration
  from rlalign.rl import state as state_lib

  model_dir = os.path.join(root, "models", setting.model)
  model_cfg, params = hf.load_hf_checkpoint(model_dir)
  spec = iteration_spec(setting, model_cfg, remat=remat, dtype=dtype)
  # The reference holds its own arrays: the policy's are donated to every step.
  frozen = {"reference": jax.tree.map(lambda x: x.copy(), params)}
  state = state_lib.init_state({"policy": params}, spec.optimizers)
  step = iteration.make_rl_step(spec)
  rng = jax.random.key(0)
  batches = list(prompt_batches(root, setting))
  if len(batches) < steps + 1:
    raise ValueError(f"{root}/prompts/{setting.name}.json holds {len(batches)} batches; "
                     f"{steps + 1} are needed (rerun rlalign.bench.fixtures)")
  times, metrics = [], []
  with profiling.count_compilations() as compiles:
    for i in range(steps + 1):
      t = time.perf_counter()
      state, m = step(state, batches[i], rng, frozen)
      m = jax.device_get(m)  # scalars only: no param leaves the device
      times.append(time.perf_counter() - t)
      if i == 0:
        first_done = time.time()
      metrics.append({k: float(np.asarray(v)) for k, v in m.items()})
  last = metrics[-1]
  return {
      "framework": "rlalign", "version": _version(), "setting": setting.name,
      "rollouts": setting.rollouts, "new_tokens": setting.new_tokens,
      "prompt_len": setting.prompt_len,
      "startup_s": first_done - start, "first_step_s": times[0], "step_s": times[1:],
      "median_step_s": statistics.median(times[1:]),
      "completion_length_mean": last["response_length"],
      "compilations": compiles.count,
      "final_metrics": {k: last[k] for k in ("loss", "kl", "reward", "grad_norm")},
      "options": {"remat": remat, "dtype": spec.model.dtype,
                  "compilation_cache": bool(jax.config.jax_compilation_cache_dir)},
  }


def _version() -> str:
  from importlib import metadata
  try:
    return metadata.version("rlalign")
  except metadata.PackageNotFoundError:
    return "source"


def main(argv=None) -> None:
  parser = common.parser(__doc__.split("\n")[0])
  parser.add_argument("--remat", action="store_true")
  parser.add_argument("--dtype", choices=("float32", "bfloat16"), default=None)
  parser.add_argument("--compilation_cache_dir", default="",
                      help="JAX's persistent compilation cache, as rlalign.main takes it")
  args = parser.parse_args(argv)
  if args.compilation_cache_dir:
    from rlalign import profiling
    profiling.enable_compilation_cache(args.compilation_cache_dir)
  setting, steps, start = common.resolve(parser, args, _START)
  result = run(args.root, setting, steps, start, remat=args.remat, dtype=args.dtype)
  write_json(args.out, result)
  print(f"rlalign {setting.name}: startup {result['startup_s']:.2f}s, first step "
        f"{result['first_step_s']:.2f}s, median step {result['median_step_s'] * 1e3:.1f}ms, "
        f"{result['compilations']} compilations")


if __name__ == "__main__":
  main()
