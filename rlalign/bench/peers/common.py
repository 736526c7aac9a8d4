"""What every GRPO runner of the benchmark shares: its command line and its JSON output.

Standard library only, like ``rlalign.bench.settings``: the peers import it from
environments that have TRL or Tunix but not rlalign's dependencies.
"""
from __future__ import annotations

import argparse
import json
import os
from typing import Any, Tuple

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
