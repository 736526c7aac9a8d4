"""ReMax on the default task (Li et al. 2023, "ReMax: A Simple, Effective, and Efficient
Reinforcement Learning Method for Aligning Large Language Models").

One sampled completion per prompt, and as its baseline the reward of the prompt's greedy
completion, sampled and scored inside the same compiled iteration
(``advantage="greedy_baseline"``, the objective's default; ``baseline_reward`` is logged).
Otherwise the GRPO job's warm start, optimizer and budget (256 sampled rollouts per step, plus
256 greedy ones).

  python -m rlalign.main --config=configs/remax_addition.py --workdir=/tmp/remax

Measured on 2 shared CPU cores (135 s wall, warm start included): held-out greedy pass@1 0.180
after the warm start -> 1.000 after RL, sampled (T=1) 0.291 -> 0.996.
"""
from rlalign import presets


def get_config(arg: str = ""):
  return presets.addition_rl(arg, presets.rl_phase(dict(name="remax", kl_coef=0.0),
                                                   group_size=1))
