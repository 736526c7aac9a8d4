"""REINFORCE++ on the default task (Hu 2025, "REINFORCE++: A Simple and Efficient Approach
for Aligning Large Language Models").

One sample per prompt (no group): the token-level KL to the reference goes into the reward
(beta 1e-3, GRPO's KL weight), returns-to-go are whitened over the whole batch's tokens, and
PPO's clipped surrogate updates the policy. Otherwise the GRPO job's warm start, optimizer and
budget (256 rollouts per step: here 256 prompts).

  python -m rlalign.main --config=configs/reinforce_pp_addition.py --workdir=/tmp/reinforce_pp

Measured on 2 shared CPU cores (157 s wall, warm start included): held-out greedy pass@1 0.180
after the warm start -> 1.000 after RL, sampled (T=1) 0.291 -> 0.994.
"""
from rlalign import presets


def get_config(arg: str = ""):
  return presets.addition_rl(arg, presets.rl_phase(
      dict(name="reinforce_pp", clip_eps=0.2, kl_in_reward=1e-3), group_size=1))
