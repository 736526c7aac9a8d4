"""Running the arms of a study: one ``python -m rlalign.main`` per arm of a shipped config.

A killed study resumes: a finished arm is read back with the wall time it took, an
unfinished one resumes from its checkpoints.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time

from typing import Any, Callable, Dict, List, Sequence, Tuple

from rlalign import metrics as metrics_lib

WALL_FILE = "study_wall_s.json"


def run_arm(out: str, config: str, arm: str, smoke: bool, seed: int = 0) -> float:
  """Runs (or resumes) ``--config=<config>:<arm>[,smoke]`` in ``<out>/<arm>``; returns the
  wall time in seconds of the run that trained it (kept in ``<arm>/study_wall_s.json``; a
  resumed arm counts only its last invocation)."""
  workdir = os.path.join(out, arm)
  summary, wall_file = os.path.join(workdir, "summary.json"), os.path.join(workdir, WALL_FILE)
  if os.path.exists(summary) and os.path.exists(wall_file):
    with open(summary) as f:
      if json.load(f).get("status") == "completed":
        with open(wall_file) as w:
          return float(json.load(w))
  arg = arm + (",smoke" if smoke else "")
  start = time.perf_counter()
  subprocess.run([sys.executable, "-m", "rlalign.main", f"--config={config}:{arg}",
                  f"--workdir={workdir}", *([f"--config.seed={seed}"] if seed else [])],
                 check=True)
  wall = time.perf_counter() - start
  metrics_lib.atomic_write(wall_file, lambda f: f.write(json.dumps(wall).encode()))
  return wall


def parse(prog: str, doc: str, arms: Sequence[str], argv: Sequence[str] | None,
          default: Sequence[str] = ()) -> Tuple[argparse.Namespace, List[str]]:
  """A study's command line: ``--out``, ``--arms`` (of ``arms``; ``default``, or all of
  them), ``--smoke``, ``--seed``."""
  parser = argparse.ArgumentParser(prog=prog, description=doc.split("\n\n")[0])
  parser.add_argument("--out", required=True, help="a directory; one workdir per arm")
  parser.add_argument("--arms", default=",".join(default or arms),
                      help=f"comma-separated, of {', '.join(arms)}")
  parser.add_argument("--smoke", action="store_true", help="every arm shrunk to seconds")
  parser.add_argument("--seed", type=int, default=0,
                      help="the runs' seed (init and sampling; the data stay the same)")
  args = parser.parse_args(argv)
  chosen = [a for a in args.arms.split(",") if a]
  unknown = [a for a in chosen if a not in arms]
  if unknown or not chosen:
    parser.error(f"--arms: unknown arm(s) {unknown}; choose from {', '.join(arms)}")
  os.makedirs(args.out, exist_ok=True)
  return args, chosen


def write_results(out: str, results: Dict[str, Any], walls: Dict[str, float], text: str,
                  plot: Callable[[str], None], png: str) -> None:
  """A study's outputs in ``out``: ``results.json`` (the results and each arm's wall time),
  ``results.md`` (``text``, its tables) and ``plot(path)``'s PNG ``png``; then the tables
  on stdout."""
  data = json.dumps({"results": results, "wall_s": walls}, indent=2).encode()
  metrics_lib.atomic_write(os.path.join(out, "results.json"), lambda f: f.write(data))
  metrics_lib.atomic_write(os.path.join(out, "results.md"),
                           lambda f: f.write((text + "\n").encode()))
  plot(os.path.join(out, png))
  print(text)


def plot_panels(fig, results: Dict[str, Dict[str, Any]],
                panels: Sequence[Tuple[str, Sequence[Tuple[str, str]]]]) -> None:
  """One panel per (title, [(label, metric), ...]) side by side on ``fig``: each arm's curves
  (``results[arm]["curves"][metric]``, (iteration, value) points), a line style per arm and a
  colour per metric."""
  styles = {arm: ("-", "--", ":", "-.")[i % 4] for i, arm in enumerate(results)}
  for i, (title, lines) in enumerate(panels):
    ax = fig.add_subplot(1, len(panels), i + 1)
    for arm, res in results.items():
      for (label, metric), color in zip(lines, ("tab:blue", "tab:orange")):
        points = res["curves"].get(metric, [])
        if points:
          ax.plot(*zip(*points), styles[arm], color=color, marker=".",
                  label=f"{arm}: {label}")
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("iteration after the warm start")
    ax.grid(alpha=0.3)
    if ax.lines:
      ax.legend(fontsize=7)


def stage_results(out: str, arm: str, ends: Dict[str, int], columns: Sequence[Tuple[str, str]],
                  marker: str) -> Dict[str, Any]:
  """An arm's held-out metrics (``columns``' keys) as each stage of ``ends`` ({stage: its
  last step}, in order) ends: the last evaluation (a record with ``marker``) at or before it;
  and their curves from the first stage's end on, in steps after it."""
  records = metrics_lib.read_jsonl(os.path.join(out, arm, "metrics.jsonl"))
  evals = [r for r in records if marker in r]
  metrics = [m for _, m in columns]
  # A rate over an empty class is NaN (nothing to rate at smoke size): left out, shown "-".
  defined = lambda v: v is not None and not math.isnan(v)
  pick = lambda r: {m: r[m] for m in metrics if defined(r.get(m))}
  start = next(iter(ends.values()))
  at = {}
  for stage, step in ends.items():
    # One evaluation is logged at every phase's end.
    done = [r for r in evals if r["step"] <= step]
    at[stage] = pick(done[-1]) if done else {}
  return {"stages": at,
          "curves": {m: [(r["step"] - start, r[m]) for r in evals
                         if r["step"] >= start and defined(r.get(m))] for m in metrics}}


def stage_table(results: Dict[str, Dict[str, Any]], walls: Dict[str, float],
                columns: Sequence[Tuple[str, str]]) -> str:
  """``stage_results`` of every arm as a markdown table, a row per arm and stage, the arm's
  wall time on its last."""
  fmt = lambda row: " | ".join(f"{row[m]:.3f}" if m in row else "-" for _, m in columns)
  lines = ["| arm | model | " + " | ".join(h for h, _ in columns) + " | wall |",
           "|" + "---|" * (len(columns) + 3)]
  for arm, res in results.items():
    stages = list(res["stages"].items())
    for i, (stage, row) in enumerate(stages):
      wall = f"{walls[arm] / 60:.1f} min" if i == len(stages) - 1 else ""
      lines.append(f"| {arm} | {stage} | {fmt(row)} | {wall} |")
  return "\n".join(lines)
