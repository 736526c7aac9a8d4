"""RLOO on the default task (Ahmadian et al. 2024, "Back to Basics: Revisiting REINFORCE
Style Optimization for Learning from Human Feedback in LLMs").

REINFORCE on whole sequences with each sample's baseline the mean reward of the other G - 1
samples of its prompt (``advantage="leave_one_out"``, the objective's default). Otherwise the
GRPO job's warm start, optimizer and budget.

  python -m rlalign.main --config=configs/rloo_addition.py --workdir=/tmp/rloo

RESULT
"""
from rlalign import presets


def get_config(arg: str = ""):
  return presets.addition_rl(arg, presets.rl_phase(dict(name="rloo", kl_coef=0.0)))
