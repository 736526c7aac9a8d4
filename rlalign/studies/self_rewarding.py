"""Self-Rewarding against a frozen judge and the gold judge: the arms of
``configs/self_rewarding_rubric.py``.

  python -m rlalign.studies.self_rewarding --out=/tmp/self_rewarding_study
      [--arms=self,frozen,gold] [--smoke] [--seed=0]

Each arm is one run of ``python -m rlalign.main`` in ``<out>/<arm>`` (a killed study resumes,
``rlalign.studies.arms``). The arms share the warm start, the judge seed, the data stream
and the sampling keys; they differ in who judges the rounds. Writes ``<out>/results.json``,
``<out>/results.md`` (the held-out metrics as each stage ends: M0 after the warm start, M1
after the judge seed, M2.. after each round, per arm) and ``<out>/self_rewarding.png``
(generation and the judge over iterations).
"""
from __future__ import annotations

from typing import Any, Dict, Sequence

from rlalign import metrics as metrics_lib
from rlalign.configs import self_rewarding_rubric as config_module
from rlalign.studies import arms as arms_lib

COLUMNS = [("greedy points", "eval/points_greedy"),
           ("greedy 5/5", "eval/gold_full_marks"),
           ("sampled points", "eval/points_sampled"),
           ("sampled 5/5", "eval/sampled_full_marks"),
           ("judge exact", "eval/judge_exact"),
           ("judge pairwise", "eval/judge_pairwise"),
           ("judge over-score", "eval/judge_overscore"),
           ("judge length bias", "eval/judge_length_bias"),
           ("response length", "eval/response_length")]


def stage_ends(config) -> Dict[str, int]:
  """The step at which each model of the run is complete: M0 .. M(1 + rounds)."""
  phases, recipe = config.phases, config.recipe
  step = phases[recipe.before[0]].steps
  ends = {"M0 (warm start)": step}
  step += phases[recipe.seed_phase].steps
  ends["M1 (judge seed)"] = step
  for k, name in enumerate(recipe.rounds, 2):
    step += phases[name].steps
    ends[f"M{k} (after {name})"] = step
  return ends


def arm_results(out: str, arm: str, ends: Dict[str, int]) -> Dict[str, Any]:
  return arms_lib.stage_results(out, arm, ends, COLUMNS, "eval/judge_exact")


def table(results: Dict[str, Dict[str, Any]], walls: Dict[str, float]) -> str:
  return arms_lib.stage_table(results, walls, COLUMNS)


def plot(results: Dict[str, Dict[str, Any]], path: str) -> None:
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  fig = Figure(figsize=(14, 3.8), layout="constrained")
  FigureCanvasAgg(fig)
  panels = [("generation (gold rubric)", [("greedy points / 5", "eval/points_greedy"),
                                          ("sampled 5/5", "eval/sampled_full_marks")]),
            ("the policy judging its own samples",
             [("exact score", "eval/judge_exact"), ("pairwise order", "eval/judge_pairwise")]),
            ("the judge's biases", [("over-score (points)", "eval/judge_overscore"),
                                    ("corr(error, length)", "eval/judge_length_bias")]),
            ("responses", [("mean length (tokens)", "eval/response_length")])]
  arms_lib.plot_panels(fig, results, panels)
  fig.suptitle("Self-Rewarding on the rubric task: the model judges itself, by rounds "
               "(held out, gold rubric)")
  metrics_lib.save_png(fig, path, dpi=110)


def main(argv: Sequence[str] | None = None) -> Dict[str, Any]:
  args, arms = arms_lib.parse("python -m rlalign.studies.self_rewarding", __doc__,
                              config_module.ARMS, argv)
  walls = {arm: arms_lib.run_arm(args.out, "self_rewarding_rubric", arm, args.smoke,
                                 args.seed) for arm in arms}
  ends = stage_ends(config_module.get_config("self" + (",smoke" if args.smoke else "")))
  results = {arm: arm_results(args.out, arm, ends) for arm in arms}
  arms_lib.write_results(args.out, results, walls, table(results, walls),
                         lambda path: plot(results, path), "self_rewarding.png")
  return results


if __name__ == "__main__":
  main()
