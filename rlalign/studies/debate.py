"""Multiagent finetuning by debate against one model self-training: the arms of
``configs/debate_addition.py``.

  python -m rlalign.studies.debate --out=/tmp/debate_study
      [--arms=multiagent,single,majority] [--smoke] [--seed=0]

Each arm is one run of ``python -m rlalign.main`` in ``<out>/<arm>`` (a killed study resumes,
``rlalign.studies.arms``). The arms share the warm start, the lesson in the debate's form
and the data stream; they differ in who plays the agents. Writes ``<out>/results.json``,
``<out>/results.md`` (the held-out metrics as each stage ends: R0 before the first
fine-tuning round, R1.. after each, per arm) and ``<out>/debate.png`` (accuracy and
diversity over iterations).
"""
from __future__ import annotations

from typing import Any, Dict, Sequence

from rlalign import metrics as metrics_lib
from rlalign.configs import debate_addition as config_module
from rlalign.studies import arms as arms_lib

COLUMNS = [("debate (consensus)", "eval/debate_accuracy"),
           ("round-1 majority", "eval/round1_majority"),
           ("round-1 agent", "eval/round1_accuracy"),
           ("round-2 agent", "eval/round2_accuracy"),
           ("agent 0 greedy", "eval/agent0_greedy"),
           ("critic fixed", "eval/critic_fixed"),
           ("critic broke", "eval/critic_broken"),
           ("answer diversity", "eval/answer_diversity"),
           ("final diversity", "eval/final_diversity"),
           ("agents' KL", "eval/agent_kl")]


def stage_ends(config) -> Dict[str, int]:
  """The step at which each fine-tuning round is complete: R0 (none yet) .. R(rounds)."""
  phases, recipe = config.phases, config.recipe
  step = sum(phases[name].steps for name in recipe.before) + phases[recipe.format_phase].steps
  ends = {"R0 (before fine-tuning)": step}
  for k, name in enumerate(recipe.rounds, 1):
    step += phases[name].steps
    ends[f"R{k} (after {name})"] = step
  return ends


def arm_results(out: str, arm: str, ends: Dict[str, int]) -> Dict[str, Any]:
  return arms_lib.stage_results(out, arm, ends, COLUMNS, "eval/debate_accuracy")


def table(results: Dict[str, Dict[str, Any]], walls: Dict[str, float]) -> str:
  return arms_lib.stage_table(results, walls, COLUMNS)


def plot(results: Dict[str, Dict[str, Any]], path: str) -> None:
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  fig = Figure(figsize=(14, 3.8), layout="constrained")
  FigureCanvasAgg(fig)
  panels = [("the system's answer", [("debate consensus", "eval/debate_accuracy"),
                                     ("round-1 majority", "eval/round1_majority")]),
            ("one agent", [("round-1 sample", "eval/round1_accuracy"),
                           ("agent 0 greedy", "eval/agent0_greedy")]),
            ("diversity across agents", [("round-1 answers", "eval/answer_diversity"),
                                         ("last round's", "eval/final_diversity")]),
            ("agents' divergence", [("pairwise KL (nats)", "eval/agent_kl")])]
  arms_lib.plot_panels(fig, results, panels)
  fig.suptitle("Multiagent debate finetuning on addition, no labels after the warm start "
               "(held out, gold answers)")
  metrics_lib.save_png(fig, path, dpi=110)


def main(argv: Sequence[str] | None = None) -> Dict[str, Any]:
  args, arms = arms_lib.parse("python -m rlalign.studies.debate", __doc__,
                              tuple(config_module.ARMS), argv,
                              default=("multiagent", "single", "majority"))
  walls = {arm: arms_lib.run_arm(args.out, "debate_addition", arm, args.smoke, args.seed)
           for arm in arms}
  ends = stage_ends(config_module.get_config("multiagent" + (",smoke" if args.smoke else "")))
  results = {arm: arm_results(args.out, arm, ends) for arm in arms}
  arms_lib.write_results(args.out, results, walls, table(results, walls),
                         lambda path: plot(results, path), "debate.png")
  return results


if __name__ == "__main__":
  main()
