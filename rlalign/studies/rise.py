"""RISE against single-turn training: both arms of ``configs/rise_addition.py``.

  python -m rlalign.studies.rise --out=/tmp/rise_study [--arms=rise,single_turn] [--smoke]
      [--seed=0]

Each arm is one run of ``python -m rlalign.main`` in ``<out>/<arm>`` (a killed study resumes,
``rlalign.studies.arms``). The arms share the warm start, the dialogue warm start and the
data stream; they differ only in the turns a training rollout takes. Writes
``<out>/results.json``, ``<out>/results.md`` (held-out greedy accuracy per turn, with and
without the oracle, at each stage) and ``<out>/rise.png`` (accuracy over turns per stage,
and each arm's turn accuracies over iterations).
"""
from __future__ import annotations

import os
from typing import Any, Dict, Sequence

from rlalign import metrics as metrics_lib
from rlalign.configs import rise_addition as config_module
from rlalign.studies import arms as arms_lib

ARMS = ("rise", "single_turn")


def columns(turns: int):
  """(heading, metric) of the table: accuracy per turn with the oracle, then without, the
  majority of every turn's answer without it, then turn 2's fixed and broken rates."""
  return ([(f"turn {k}", f"eval/turn{k}_accuracy") for k in range(1, turns + 1)]
          + [(f"turn {k}, no oracle", f"eval/turn{k}_accuracy_no_oracle")
             for k in range(2, turns + 1)]
          + [(f"majority of {turns}, no oracle", f"eval/turn{turns}_majority"),
             ("fixed at turn 2", "eval/turn2_fixed"), ("broken at turn 2", "eval/turn2_broken")])


def stage_steps(smoke: bool) -> Dict[str, int]:
  """The metrics step at which each stage ends: the warm start, the dialogue warm start."""
  phases = config_module.get_config("rise" + (",smoke" if smoke else "")).phases
  warm = phases.warm_start.steps
  return {"warm start": warm, "dialogue warm start": warm + phases.dialogue.steps}


def arm_results(out: str, arm: str, stages: Dict[str, int], turns: int) -> Dict[str, Any]:
  records = metrics_lib.read_jsonl(os.path.join(out, arm, "metrics.jsonl"))
  evals = [r for r in records if "eval/turn1_accuracy" in r]
  metrics = [m for _, m in columns(turns)]
  pick = lambda r: {m: r[m] for m in metrics if r.get(m) is not None}
  at = {name: next((pick(r) for r in evals if r["step"] == step), {})
        for name, step in stages.items()}
  start = stages["dialogue warm start"]
  return {"stages": at, "final": pick(evals[-1]),
          "curves": {m: [(r["step"] - start, r[m]) for r in evals if r["step"] >= start
                         and m in r] for m in metrics}}


def table(results: Dict[str, Dict[str, Any]], walls: Dict[str, float], turns: int) -> str:
  cols = columns(turns)
  fmt = lambda row: " | ".join(f"{row[m]:.3f}" if m in row else "-" for _, m in cols)
  lines = ["| stage | " + " | ".join(h for h, _ in cols) + " | wall |",
           "|" + "---|" * (len(cols) + 2)]
  first = next(iter(results.values()))
  for name, row in first["stages"].items():
    lines.append(f"| {name} | {fmt(row)} | - |")
  for arm, res in results.items():
    lines.append(f"| {arm} | {fmt(res['final'])} | {walls[arm] / 60:.1f} min |")
  return "\n".join(lines)


def plot(results: Dict[str, Dict[str, Any]], path: str, turns: int) -> None:
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  fig = Figure(figsize=(11, 4), layout="constrained")
  FigureCanvasAgg(fig)
  ax = fig.add_subplot(1, 2, 1)
  x = list(range(1, turns + 1))
  acc = lambda row: [row.get(f"eval/turn{k}_accuracy", float("nan")) for k in x]
  first = next(iter(results.values()))
  for name, row in first["stages"].items():
    ax.plot(x, acc(row), "o--", label=name)
  for arm, res in results.items():
    ax.plot(x, acc(res["final"]), "o-", label=f"{arm} (trained)")
  ax.set_xticks(x)
  ax.set_xlabel("turn (feedback only after a wrong answer)")
  ax.set_ylabel("held-out greedy accuracy by this turn")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  ax = fig.add_subplot(1, 2, 2)
  for arm, res in results.items():
    for k, style in ((1, ":"), (2, "-")):
      points = res["curves"].get(f"eval/turn{k}_accuracy", [])
      if points:
        ax.plot(*zip(*points), style, marker=".", label=f"{arm}, by turn {k}")
  ax.set_xlabel("iteration after the warm starts")
  ax.grid(alpha=0.3)
  if ax.lines:
    ax.legend(fontsize=8)
  fig.suptitle("RISE on addition with a hidden digit: accuracy over turns")
  metrics_lib.save_png(fig, path, dpi=110)


def main(argv: Sequence[str] | None = None) -> Dict[str, Any]:
  args, arms = arms_lib.parse("python -m rlalign.studies.rise", __doc__, ARMS, argv)
  walls = {arm: arms_lib.run_arm(args.out, "rise_addition", arm, args.smoke, args.seed)
           for arm in arms}
  turns = config_module.get_config("rise").recipe.eval_turns
  stages = stage_steps(args.smoke)
  results = {arm: arm_results(args.out, arm, stages, turns) for arm in arms}
  text = table(results, walls, turns)
  arms_lib.write_results(args.out, results, walls, text, lambda path: plot(results, path, turns), "rise.png")
  return results


if __name__ == "__main__":
  main()
