"""What every GRPO runner of the benchmark shares: its command line and its JSON output.

Standard library only, like ``rlalign.bench.settings``: the peers import it from
environments that have TRL or Tunix but not rlalign's dependencies.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
from typing import Any, Dict, Sequence, Tuple

from rlalign.bench import settings as S


def parser(description: str) -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(description=description)
  p.add_argument("--root", required=True, help="fixtures root (rlalign.bench.fixtures)")
  p.add_argument("--setting", required=True, choices=sorted(S.GRPO_SETTINGS))
  p.add_argument("--out", required=True, help="JSON result path")
  p.add_argument("--launch_time", type=float, default=None,
                 help="epoch seconds just before this process was spawned; the startup origin")
  p.add_argument("--steps", type=int, default=None, help="timed steps after the first")
  return p


def resolve(p: argparse.ArgumentParser, args: argparse.Namespace, script_start: float
            ) -> Tuple[S.GRPOSetting, int, float]:
  """The setting, the number of timed steps and the start-up origin of a parsed command."""
  setting = S.GRPO_SETTINGS[args.setting]
  steps = setting.steps if args.steps is None else args.steps
  if steps < 1:
    p.error("--steps must be >= 1")
  start = args.launch_time if args.launch_time is not None else script_start
  return setting, steps, start


def write_json(path: str, data: Any) -> None:
  """Writes ``data`` atomically: a reader never sees half a file."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f"{path}.tmp"
  with open(tmp, "w") as f:
    json.dump(data, f, indent=2)
  os.replace(tmp, path)


def timing_fields(setting: S.GRPOSetting, steps: int, start: float, first_end_wall: float,
                  durations: Sequence[float], lengths: Sequence[float],
                  length_range: Tuple[int, int], launched: bool) -> Dict[str, Any]:
  """The fields every peer's result shares: the workload, start-up and step times."""
  step_s = list(durations[1:])
  return {
      "setting": setting.name,
      "model": setting.model,
      "rollouts": setting.rollouts,
      "new_tokens": setting.new_tokens,
      "prompt_len": setting.prompt_len,
      "steps": steps,
      "startup_s": first_end_wall - start,
      "startup_origin": "launch_time" if launched else "script_start",
      "first_step_s": durations[0],
      "step_s": step_s,
      "median_step_s": statistics.median(step_s),
      "completion_length_mean": statistics.fmean(lengths),
      "completion_length_min_max": list(length_range),
  }
