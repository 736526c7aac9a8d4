"""Dr.GRPO on the default task (Liu et al. 2025, "Understanding R1-Zero-Like Training").

GRPO without its two normalisers: advantages r - mean_g r (no division by the group's std) and
the loss summed over tokens and divided by a constant (rows x the generation budget) instead of
each completion's length. No KL term, as in the paper. The warm start, optimizer and RL budget
are the GRPO job's (``presets.addition_rl``).

  python -m rlalign.main --config=configs/dr_grpo_addition.py --workdir=/tmp/dr_grpo

Measured on 2 shared CPU cores (82 s wall, warm start included): held-out greedy pass@1 0.180
after the warm start -> 0.998 after RL, sampled (T=1) 0.291 -> 0.994.
"""
from rlalign import presets


def get_config(arg: str = ""):
  return presets.addition_rl(arg, presets.rl_phase(
      dict(name="grpo", clip_eps=0.2, kl_coef=0.0, aggregation="constant"),
      advantage="group_mean"))
