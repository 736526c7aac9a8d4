"""RL Tango against GRPO alone and a frozen verifier: the arms of ``configs/tango_addition.py``.

  python -m rlalign.studies.tango --out=/tmp/tango_study [--arms=tango,frozen,grpo] [--smoke]
      [--seed=0]
  python -m rlalign.studies.tango --out=/tmp/tango_4d --arms=tango_4d,frozen_4d,grpo_4d

Each arm is one run of ``python -m rlalign.main`` in ``<out>/<arm>`` (a killed study resumes,
``rlalign.studies.arms``). The arms share the warm start, the data stream and the generator's
sampling keys; they differ in the generator's reward and in whether the verifier trains.
Writes ``<out>/results.json``, ``<out>/results.md`` (the held-out metrics after the warm start
and after each arm, and the first evaluation at which the generator's greedy pass@1 reached
0.9) and ``<out>/tango.png`` (both models over iterations).
"""
from __future__ import annotations

import math
import os
from typing import Any, Dict, Optional, Sequence

from rlalign import metrics as metrics_lib
from rlalign.configs import tango_addition as config_module
from rlalign.studies import arms as arms_lib

FIRST = ("tango", "frozen", "grpo")
ARMS = FIRST + tuple(f"{arm}{config_module.WIDE}" for arm in FIRST)  # the second design
COLUMNS = [("greedy pass@1", "eval/pass@1_greedy"),
           ("sampled pass@1", "eval/pass@1_sampled"),
           ("verifier AUROC on its samples", "eval/verifier_auroc"),
           ("balanced accuracy", "eval/verifier_balanced_accuracy"),
           ("false-positive rate", "eval/verifier_false_positive_rate"),
           ("written verdicts right", "eval/verifier_written_accuracy"),
           ("step balanced accuracy", "eval/verifier_step_balanced_accuracy"),
           ("near miss", "eval/near_miss_accuracy"),
           ("near miss localised", "eval/near_miss_localised")]
REACH = 0.9


def arm_results(out: str, arm: str, start: int) -> Dict[str, Any]:
  records = metrics_lib.read_jsonl(os.path.join(out, arm, "metrics.jsonl"))
  evals = [r for r in records if "eval/verifier_auroc" in r]
  metrics = [m for _, m in COLUMNS]
  # A rate over an empty class is NaN (no right sample at smoke size): left out, shown "-".
  defined = lambda v: v is not None and not math.isnan(v)
  pick = lambda r: {m: r[m] for m in metrics if defined(r.get(m))}
  opening = next((pick(r) for r in evals if r["step"] == start), {})
  reached: Optional[int] = next((r["step"] - start for r in evals
                                 if r["step"] > start and r["eval/pass@1_greedy"] >= REACH),
                                None)
  return {"warm_start": opening, "final": pick(evals[-1]) if evals else {},
          "reached": reached,
          "curves": {m: [(r["step"] - start, r[m]) for r in evals
                         if r["step"] >= start and defined(r.get(m))] for m in metrics}}


def table(results: Dict[str, Dict[str, Any]], walls: Dict[str, float]) -> str:
  fmt = lambda row: " | ".join(f"{row[m]:.3f}" if m in row else "-" for _, m in COLUMNS)
  lines = ["| stage | " + " | ".join(h for h, _ in COLUMNS)
           + f" | greedy >= {REACH} from | wall |", "|" + "---|" * (len(COLUMNS) + 3)]
  first = next(iter(results.values()))
  lines.append(f"| warm start | {fmt(first['warm_start'])} | - | - |")
  for arm, res in results.items():
    reached = "never" if res["reached"] is None else f"iteration {res['reached']}"
    lines.append(f"| {arm} | {fmt(res['final'])} | {reached} | {walls[arm] / 60:.1f} min |")
  return "\n".join(lines)


def plot(results: Dict[str, Dict[str, Any]], path: str) -> None:
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  fig = Figure(figsize=(14, 3.8), layout="constrained")
  FigureCanvasAgg(fig)
  panels = [("generator", [("greedy pass@1", "eval/pass@1_greedy"),
                           ("sampled pass@1", "eval/pass@1_sampled")]),
            ("verifier on the generator's samples",
             [("AUROC", "eval/verifier_auroc"),
              ("false-positive rate", "eval/verifier_false_positive_rate")]),
            ("verifier: written verdicts, step P(yes)",
             [("written, right about the outcome", "eval/verifier_written_accuracy"),
              ("steps by P(yes), balanced accuracy", "eval/verifier_step_balanced_accuracy")]),
            ("gold vs a near miss", [("outcome", "eval/near_miss_accuracy"),
                                     ("wrong digit found", "eval/near_miss_localised")])]
  arms_lib.plot_panels(fig, results, panels)
  fig.suptitle("RL Tango on addition: generator and step verifier, both by RL "
               "(held out, gold judge)")
  metrics_lib.save_png(fig, path, dpi=110)


def main(argv: Sequence[str] | None = None) -> Dict[str, Any]:
  args, arms = arms_lib.parse("python -m rlalign.studies.tango", __doc__, ARMS, argv,
                              default=FIRST)
  walls = {arm: arms_lib.run_arm(args.out, "tango_addition", arm, args.smoke, args.seed)
           for arm in arms}
  config = config_module.get_config("tango" + (",smoke" if args.smoke else ""))
  start = config.phases.warm_start.steps
  results = {arm: arm_results(args.out, arm, start) for arm in arms}
  arms_lib.write_results(args.out, results, walls, table(results, walls),
                         lambda path: plot(results, path), "tango.png")
  return results


if __name__ == "__main__":
  main()
