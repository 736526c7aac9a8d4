"""Where one GRPO iteration's time goes: a jax.profiler trace and a breakdown by phase.

  python -m rlalign.bench.profile --root=/tmp/rlalign_bench --setting=medium --out=DIR

It runs the fused step of ``rlalign.bench.grpo`` a few times, traces one more, and attributes
every XLA op in the trace to a phase through the op's name in the compiled program: decode,
prefill and reference scoring, the training forward, the backward, and the rest (sampling
arithmetic, the optimizer, advantages). ``DIR`` gets the trace (open it in Perfetto or
TensorBoard), ``profile.json`` and ``profile.md``. Op times are summed over XLA's thunks, which
may overlap on two cores, so phase totals can exceed the step's wall time slightly.
"""
from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import shutil
import time
from typing import Any, Dict

from rlalign.bench import settings as S
from rlalign.bench.peers.common import write_json

# Trace events that are not XLA ops: the executor, loops, Python and runtime bookkeeping.
_NOT_OPS = ("$", "Thunk", "while", "Slinky", "call", "conditional", "Pjit", "Python",
            "PjRt", "TfrtCpu")


def _phase(op_name: str, calls: int, steps: int) -> str:
  if "transpose(jvp" in op_name:
    return "backward"
  if "jvp(" in op_name:
    return "train forward"
  if calls >= steps:  # once per generated token
    return "decode"
  if "closed_call" in op_name:  # inside a layer scan: the prefill or the reference
    return "prefill + reference"
  return "other"


def profile(root: str, setting: S.GRPOSetting, out: str, warmup: int = 3) -> Dict[str, Any]:
  import jax
  from rlalign.bench import grpo as bench_grpo
  from rlalign.models import hf
  from rlalign.rl import iteration
  from rlalign.rl import state as state_lib
  cfg, params = hf.load_hf_checkpoint(os.path.join(root, "models", setting.model))
  spec = bench_grpo.iteration_spec(setting, cfg)
  frozen = {"reference": jax.tree.map(lambda x: x.copy(), params)}
  state = state_lib.init_state({"policy": params}, spec.optimizers)
  step = iteration.make_rl_step(spec)
  batches = list(bench_grpo.prompt_batches(root, setting))
  rng = jax.random.key(0)
  for i in range(warmup):
    state, metrics = step(state, batches[i % len(batches)], rng, frozen)
  jax.block_until_ready(metrics)
  trace_dir = os.path.join(out, "trace")
  shutil.rmtree(trace_dir, ignore_errors=True)
  with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
    start = time.perf_counter()
    state, metrics = jax.block_until_ready(step(state, batches[warmup % len(batches)], rng,
                                                frozen))
    wall = time.perf_counter() - start
  hlo = step.lower(state, batches[0], rng, frozen).compile().as_text()
  (path,) = glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True)
  with gzip.open(path) as f:
    events = json.load(f)
  events = events["traceEvents"] if isinstance(events, dict) else events
  total, calls = collections.Counter(), collections.Counter()
  for e in events:
    if e.get("ph") == "X" and not e["name"].startswith(_NOT_OPS):
      total[e["name"]] += e["dur"] / 1e6
      calls[e["name"]] += 1
  phases, ops = collections.Counter(), []
  for name, seconds in total.items():
    m = re.search(r"%" + re.escape(name) + r' = (\S+) [^\n]*?op_name="([^"]*)"', hlo)
    shape, op_name = (m.group(1), m.group(2)) if m else ("", "")
    phase = _phase(op_name, calls[name], setting.new_tokens)
    phases[phase] += seconds
    ops.append({"op": name, "seconds": seconds, "calls": calls[name], "shape": shape,
                "phase": phase, "source": op_name[-80:]})
  ops.sort(key=lambda o: -o["seconds"])
  return {"setting": setting.name, "wall_s": wall, "ops_s": sum(total.values()),
          "phases_s": dict(phases.most_common()), "top_ops": ops[:25],
          "trace": os.path.relpath(path, out)}


def to_markdown(r: Dict[str, Any]) -> str:
  lines = [f"# Profile of one `{r['setting']}` GRPO iteration", "",
           f"Wall {r['wall_s'] * 1e3:.0f} ms; XLA ops {r['ops_s'] * 1e3:.0f} ms in all.", "",
           "| phase | ms | share |", "|---|---:|---:|"]
  for phase, seconds in r["phases_s"].items():
    lines.append(f"| {phase} | {seconds * 1e3:.0f} | {seconds / r['ops_s']:.0%} |")
  lines += ["", "| op | phase | calls | ms | shape | from |", "|---|---|---:|---:|---|---|"]
  for o in r["top_ops"]:
    lines.append(f"| {o['op']} | {o['phase']} | {o['calls']} | {o['seconds'] * 1e3:.1f} | "
                 f"`{o['shape']}` | `{o['source']}` |")
  return "\n".join(lines) + "\n"


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--root", default="/tmp/rlalign_bench")
  parser.add_argument("--setting", default="medium", choices=sorted(S.GRPO_SETTINGS))
  parser.add_argument("--out", required=True)
  args = parser.parse_args(argv)
  from rlalign.bench import fixtures
  fixtures.write_all(args.root)
  os.makedirs(args.out, exist_ok=True)
  result = profile(args.root, S.GRPO_SETTINGS[args.setting], args.out)
  write_json(os.path.join(args.out, "profile.json"), result)
  text = to_markdown(result)
  with open(os.path.join(args.out, "profile.md"), "w") as f:
    f.write(text)
  print(text)


if __name__ == "__main__":
  main()
