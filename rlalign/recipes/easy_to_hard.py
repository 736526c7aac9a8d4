"""Easy-to-hard transfer without labels: a verifier trained where labels exist supplies the
reward where they do not (Sun et al. 2024, "Easy-to-Hard Generalization: Scalable Alignment
Beyond Human Supervision"; the research goal of SPARK and RL Tango's co-training).

The run is the ``alternating`` loop over a dataset whose train split mixes labelled (easy)
prompts and unlabelled (hard) ones. Each iteration the generator samples groups for both and
takes a GRPO step; its reward on labelled prompts is their answer (``exact_match``), and on
unlabelled ones whatever the config names with ``rows="unlabelled"``:

  cotrain          the verifier's P(correct), sigmoid of its scalar head (reward_model)
  majority         self-consistency, the group's majority answer (majority_vote, TTRL)
  self_confidence  the generator's own confidence in its answer (self-judging, no verifier)
  easy_only        nothing: RL on the labelled prompts alone

The verifier then trains on the iteration's rollouts of labelled prompts only, labelled by
``exact_match``. The gold answers of the hard problems exist only in the held-out split named
by ``data.eval_splits`` ("test_hard"): the train split holds hard prompts without an answer
or a demonstration, no training iterator opens another split, and this recipe refuses a run
without that held-out split. The evaluator alone reads it, and logs:

  eval/test_hard/pass@1_{greedy,sampled}          the generator on hard problems (gold)
  eval/test_hard/verifier_{accuracy,false_positive_rate,...}
                                                  the verifier's verdicts on the generator's
                                                  hard samples against gold: its false
                                                  positives are the reward to hack
  eval/pass@1_*, eval/verifier_*                  the same on held-out easy problems

  configs/easy_to_hard_addition.py; python -m rlalign.studies.easy_to_hard runs every arm
"""
from __future__ import annotations

import dataclasses

from rlalign.recipes import alternating, base
from rlalign.rl.experiment import ExperimentConfig


@dataclasses.dataclass(frozen=True)
class EasyToHardSettings(alternating.AlternatingSettings):
  verifier_rows: str = "labelled"

  def validate(self, prefix: str, cfg: ExperimentConfig) -> None:
    super().validate(prefix, cfg)
    if self.verifier_rows != "labelled":
      raise ValueError(f"{prefix}.verifier_rows must be 'labelled': the verifier learns only "
                       "where labels exist")
    if self.labels != "reward":
      raise ValueError(f"{prefix}.labels must be 'reward' (outcome labels of labelled prompts)")
    if not cfg.data.eval_splits:
      raise ValueError("data.eval_splits must name the held-out split with the unlabelled "
                       "problems' gold answers (\"test_hard\" for addition with "
                       "data.hard_digits): without it nothing measures the transfer")
    data = cfg.data
    if data.task == "addition" and not (data.hard_digits and 0 < data.hard_fraction < 1):
      raise ValueError("data.hard_digits must be set and 0 < data.hard_fraction < 1: the "
                       "recipe needs both labelled (easy) and unlabelled (hard) prompts, got "
                       f"hard_digits={data.hard_digits}, hard_fraction={data.hard_fraction}")
    gen = cfg.phase_configs[self.generator_phase]
    label = next(t for t in gen.rewards if t.key == self.label_reward)
    if label.rows == "unlabelled":
      raise ValueError(f"phases.{self.generator_phase}.rewards.{self.label_reward}: the label "
                       "reward cannot score unlabelled rows, which have no answer")


RECIPE = base.register(base.Recipe("easy_to_hard", EasyToHardSettings, alternating.run,
                                          alternating.dry_run_program))
