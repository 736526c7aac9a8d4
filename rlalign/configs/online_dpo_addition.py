"""Online DPO on the default task (Guo et al. 2024, "Direct Language Model Alignment from
Online AI Feedback"): each step the policy samples 8 completions per prompt, the phase's reward
(here exact match; any reward, a learned reward model included, can rank them) picks the best
and the worst of each group as a preference pair, and DPO trains on those pairs against the
reference copied when the phase starts. Groups whose samples all score the same give no pair
(``informative_pairs``). beta 0.5 and the learning rate 1e-4 are the offline DPO job's.

  python -m rlalign.main --config=configs/online_dpo_addition.py --workdir=/tmp/online_dpo

Measured on 2 shared CPU cores (90 s wall, warm start included): held-out greedy pass@1 0.180
after the warm start -> 0.998 after RL, sampled (T=1) 0.291 -> 0.955.
"""
from rlalign import presets


def get_config(arg: str = ""):
  return presets.addition_rl(arg, presets.rl_phase(
      dict(name="online_dpo", beta=0.5, label_smoothing=0.0),
      optimizer=dict(presets.PREFERENCE_OPTIMIZER)))
