"""GSPO on the default task (Zheng et al. 2025, "Group Sequence Policy Optimization").

One importance ratio per sequence, exp of the mean per-token log-ratio, clipped to
[1 - 3e-4, 1 + 4e-4] (the paper's ranges); group-normalised advantages and no KL. Otherwise
the GRPO job's warm start, optimizer and budget.

  python -m rlalign.main --config=configs/gspo_addition.py --workdir=/tmp/gspo

Measured on 2 shared CPU cores (85 s wall, warm start included): held-out greedy pass@1 0.180
after the warm start -> 0.996 after RL, sampled (T=1) 0.291 -> 0.994.
"""
from rlalign import presets


def get_config(arg: str = ""):
  return presets.addition_rl(arg, presets.rl_phase(
      dict(name="gspo", clip_eps=3e-4, clip_eps_high=4e-4, kl_coef=0.0)))
