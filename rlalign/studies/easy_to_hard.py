"""Easy-to-hard transfer without labels: every arm of ``configs/easy_to_hard_addition.py``.

  python -m rlalign.studies.easy_to_hard --out=/tmp/e2h_study [--arms=cotrain,majority,...]
      [--smoke]

Each arm is one run of ``python -m rlalign.main`` in ``<out>/<arm>`` (a killed study resumes:
a finished arm is read back, an unfinished one resumes from its checkpoints). The arms share
the warm start and the data stream and differ only in the reward on hard prompts. Writes
``<out>/results.json``, ``<out>/results.md`` (the table below) and ``<out>/easy_to_hard.png``
(per arm over iterations: hard gold pass@1, easy pass@1, and the verifier's balanced accuracy
and false-positive rate on hard samples).

Gold figures come from the held-out split ``test_hard``, which only the evaluator reads.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from typing import Any, Dict, List, Sequence

from rlalign import metrics as metrics_lib
from rlalign.configs import easy_to_hard_addition as config_module

ARMS = ("easy_only", "majority", "self_confidence", "cotrain", "cotrain_balanced")
COLUMNS = (  # (heading, metric)
    ("hard pass@1 greedy", "eval/test_hard/pass@1_greedy"),
    ("hard pass@1 sampled", "eval/test_hard/pass@1_sampled"),
    ("easy pass@1 greedy", "eval/pass@1_greedy"),
    ("verifier hard bal. acc.", "eval/test_hard/verifier_balanced_accuracy"),
    ("verifier hard AUROC", "eval/test_hard/verifier_auroc"),
    ("verifier hard FPR", "eval/test_hard/verifier_false_positive_rate"),
)
CURVES = (("hard pass@1 greedy (gold)", "eval/test_hard/pass@1_greedy"),
          ("easy pass@1 greedy", "eval/pass@1_greedy"),
          ("verifier AUROC, hard samples", "eval/test_hard/verifier_auroc"),
          ("verifier false-positive rate, hard samples",
           "eval/test_hard/verifier_false_positive_rate"))


def run_arm(out: str, arm: str, smoke: bool) -> float:
  """Runs (or resumes) one arm; returns its wall time in seconds (0 if it had finished)."""
  workdir = os.path.join(out, arm)
  summary = os.path.join(workdir, "summary.json")
  if os.path.exists(summary):
    with open(summary) as f:
      if json.load(f).get("status") == "completed":
        return 0.0
  arg = arm + (",smoke" if smoke else "")
  start = time.perf_counter()
  subprocess.run([sys.executable, "-m", "rlalign.main",
                  f"--config=easy_to_hard_addition:{arg}", f"--workdir={workdir}"], check=True)
  return time.perf_counter() - start


def warm_start_steps(smoke: bool) -> int:
  return config_module.get_config("cotrain" + (",smoke" if smoke else "")).phases.warm_start.steps


def arm_results(out: str, arm: str, offset: int) -> Dict[str, Any]:
  """The arm's evaluations: at the warm start's end, at the end, and every one in between."""
  records = metrics_lib.read_jsonl(os.path.join(out, arm, "metrics.jsonl"))
  evals = [r for r in records if "eval/test_hard/pass@1_greedy" in r]
  start = [r for r in evals if r["step"] <= offset]
  have = lambda r, m: m in r and math.isfinite(r[m])  # NaN: AUROC with one class only
  pick = lambda r: {m: r[m] for _, m in COLUMNS if have(r, m)}
  return {"warm_start": pick(start[-1]) if start else {}, "final": pick(evals[-1]),
          "curves": {m: [(r["step"] - offset, r[m]) for r in evals
                         if have(r, m) and r["step"] >= offset] for _, m in CURVES}}


def table(results: Dict[str, Dict[str, Any]], walls: Dict[str, float]) -> str:
  head = "| arm | " + " | ".join(h for h, _ in COLUMNS) + " | wall |"
  lines = [head, "|" + "---|" * (len(COLUMNS) + 2)]
  fmt = lambda row: " | ".join(f"{row[m]:.3f}" if m in row else "-" for _, m in COLUMNS)
  first = next(iter(results.values()))
  lines.append(f"| warm start | {fmt(first['warm_start'])} | - |")
  for arm, res in results.items():
    wall = walls.get(arm, 0.0)
    lines.append(f"| {arm} | {fmt(res['final'])} | "
                 f"{f'{wall / 60:.1f} min' if wall else 'earlier run'} |")
  return "\n".join(lines)


def plot(results: Dict[str, Dict[str, Any]], path: str) -> None:
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  fig = Figure(figsize=(10, 7), layout="constrained")
  FigureCanvasAgg(fig)
  for i, (title, metric) in enumerate(CURVES):
    ax = fig.add_subplot(2, 2, i + 1)
    for arm, res in results.items():
      points = res["curves"][metric]
      if points:
        ax.plot(*zip(*points), marker=".", label=arm)
    ax.set_title(title)
    ax.set_xlabel("iteration after the warm start")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  fig.suptitle("Easy-to-hard transfer on addition (labels for 3 digits, gold judge on 4)")
  metrics_lib.atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110),
                           suffix=".png")


def main(argv: Sequence[str] | None = None) -> Dict[str, Any]:
  parser = argparse.ArgumentParser(prog="python -m rlalign.studies.easy_to_hard",
                                   description=__doc__.split("\n\n")[0])
  parser.add_argument("--out", required=True, help="a directory; one workdir per arm")
  parser.add_argument("--arms", default=",".join(ARMS),
                      help=f"comma-separated, of {', '.join(ARMS)}")
  parser.add_argument("--smoke", action="store_true", help="every arm shrunk to seconds")
  args = parser.parse_args(argv)
  arms: List[str] = [a for a in args.arms.split(",") if a]
  unknown = [a for a in arms if a not in ARMS]
  if unknown or not arms:
    parser.error(f"--arms: unknown arm(s) {unknown}; choose from {', '.join(ARMS)}")
  os.makedirs(args.out, exist_ok=True)
  walls = {arm: run_arm(args.out, arm, args.smoke) for arm in arms}
  offset = warm_start_steps(args.smoke)
  results = {arm: arm_results(args.out, arm, offset) for arm in arms}
  text = table(results, walls)
  data = json.dumps({"results": results, "wall_s": walls}, indent=2).encode()
  metrics_lib.atomic_write(os.path.join(args.out, "results.json"), lambda f: f.write(data))
  metrics_lib.atomic_write(os.path.join(args.out, "results.md"),
                           lambda f: f.write((text + "\n").encode()))
  plot(results, os.path.join(args.out, "easy_to_hard.png"))
  print(text)
  return results


if __name__ == "__main__":
  main()
