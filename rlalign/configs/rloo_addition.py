"""RLOO on the default task (Ahmadian et al. 2024, "Back to Basics: Revisiting REINFORCE
Style Optimization for Learning from Human Feedback in LLMs").

REINFORCE on whole sequences with each sample's baseline the mean reward of the other G - 1
samples of its prompt (``advantage="leave_one_out"``, the objective's default). Otherwise the
GRPO job's warm start, optimizer and budget.

  python -m rlalign.main --config=configs/rloo_addition.py --workdir=/tmp/rloo

Measured on 2 shared CPU cores (124 s wall, warm start included): held-out greedy pass@1 0.180
after the warm start -> 1.000 after RL, sampled (T=1) 0.291 -> 0.996.
"""
from rlalign import presets


def get_config(arg: str = ""):
  return presets.addition_rl(arg, presets.rl_phase(dict(name="rloo", kl_coef=0.0)))
