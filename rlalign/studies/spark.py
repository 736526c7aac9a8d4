"""SPARK against GRPO alone: both arms of ``configs/spark_addition.py``.

  python -m rlalign.studies.spark --out=/tmp/spark_study [--arms=spark,grpo] [--smoke]
      [--seed=0]

Each arm is one run of ``python -m rlalign.main`` in ``<out>/<arm>`` (a killed study resumes,
``rlalign.studies.arms``). The arms share the warm start, the data stream and the answers'
sampling keys; they differ only in the verifier tasks. Writes ``<out>/results.json``,
``<out>/results.md`` (the held-out metrics after the warm start and after each arm) and
``<out>/spark.png`` (generation, self-verification and test-time use over iterations).
"""
from __future__ import annotations

import math
import os
from typing import Any, Dict, Sequence

from rlalign import metrics as metrics_lib
from rlalign.configs import spark_addition as config_module
from rlalign.studies import arms as arms_lib

ARMS = ("spark", "grpo")


def columns(samples: int):
  """(heading, metric) of the table, generation first, then verification, then its use."""
  return [("greedy pass@1", "eval/pass@1_greedy"),
          ("sampled pass@1", "eval/self_pass@1"),
          (f"self-verified best of {samples}", f"eval/self_best_of_{samples}"),
          (f"pass@{samples}", f"eval/self_pass@{samples}"),
          ("self-corrected", "eval/self_corrected"),
          ("reflection fixes", "eval/self_reflection_fixes"),
          ("verdicts on own samples: AUROC", "eval/self_verify_auroc"),
          ("balanced accuracy", "eval/self_verify_balanced_accuracy"),
          ("near miss, pointwise", "eval/near_miss_pointwise_accuracy"),
          ("near miss, pairwise", "eval/near_miss_pairwise_accuracy")]


def arm_results(out: str, arm: str, start: int, samples: int) -> Dict[str, Any]:
  records = metrics_lib.read_jsonl(os.path.join(out, arm, "metrics.jsonl"))
  evals = [r for r in records if "eval/self_pass@1" in r]
  metrics = [m for _, m in columns(samples)]
  # A rate over an empty class is NaN (no right sample at smoke size): left out, shown "-".
  defined = lambda v: v is not None and not math.isnan(v)
  pick = lambda r: {m: r[m] for m in metrics if defined(r.get(m))}
  opening = next((pick(r) for r in evals if r["step"] == start), {})
  return {"warm_start": opening, "final": pick(evals[-1]) if evals else {},
          "curves": {m: [(r["step"] - start, r[m]) for r in evals
                         if r["step"] >= start and defined(r.get(m))] for m in metrics}}


def table(results: Dict[str, Dict[str, Any]], walls: Dict[str, float], samples: int) -> str:
  cols = columns(samples)
  fmt = lambda row: " | ".join(f"{row[m]:.3f}" if m in row else "-" for _, m in cols)
  lines = ["| stage | " + " | ".join(h for h, _ in cols) + " | wall |",
           "|" + "---|" * (len(cols) + 2)]
  first = next(iter(results.values()))
  lines.append(f"| warm start | {fmt(first['warm_start'])} | - |")
  for arm, res in results.items():
    lines.append(f"| {arm} | {fmt(res['final'])} | {walls[arm] / 60:.1f} min |")
  return "\n".join(lines)


def plot(results: Dict[str, Dict[str, Any]], path: str, samples: int) -> None:
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  fig = Figure(figsize=(14, 3.8), layout="constrained")
  FigureCanvasAgg(fig)
  panels = [("generation", [("greedy pass@1", "eval/pass@1_greedy"),
                            ("sampled pass@1", "eval/self_pass@1")]),
            ("its verdicts on its own samples", [("AUROC", "eval/self_verify_auroc"),
                                                 ("balanced accuracy",
                                                  "eval/self_verify_balanced_accuracy")]),
            ("gold vs a near miss", [("pointwise", "eval/near_miss_pointwise_accuracy"),
                                     ("pairwise", "eval/near_miss_pairwise_accuracy")]),
            ("test-time use", [(f"self-verified best of {samples}",
                                f"eval/self_best_of_{samples}"),
                               ("self-corrected", "eval/self_corrected")])]
  arms_lib.plot_panels(fig, results, panels)
  fig.suptitle("SPARK on addition: one policy, its own verifier (held out, gold judge)")
  metrics_lib.save_png(fig, path, dpi=110)


def main(argv: Sequence[str] | None = None) -> Dict[str, Any]:
  args, arms = arms_lib.parse("python -m rlalign.studies.spark", __doc__, ARMS, argv)
  walls = {arm: arms_lib.run_arm(args.out, "spark_addition", arm, args.smoke, args.seed)
           for arm in arms}
  config = config_module.get_config("spark" + (",smoke" if args.smoke else ""))
  samples, start = config.recipe.eval_samples, config.phases.warm_start.steps
  results = {arm: arm_results(args.out, arm, start, samples) for arm in arms}
  text = table(results, walls, samples)
  arms_lib.write_results(args.out, results, walls, text, lambda path: plot(results, path, samples), "spark.png")
  return results


if __name__ == "__main__":
  main()
