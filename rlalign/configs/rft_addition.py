"""Rejection-sampling fine-tuning on the default task (STaR, Zelikman et al. 2022; RFT, Yuan
et al. 2023): sample 8 completions per prompt, keep the ones the exact-match verifier accepts,
and train on them with the SFT loss, every step. Otherwise the GRPO job's warm start,
optimizer and budget.

  python -m rlalign.main --config=configs/rft_addition.py --workdir=/tmp/rft

Measured on 2 shared CPU cores (79 s wall, warm start included): held-out greedy pass@1 0.180
after the warm start -> 1.000 after RL, sampled (T=1) 0.291 -> 0.996.
"""
from rlalign import presets


def get_config(arg: str = ""):
  return presets.addition_rl(arg, presets.rl_phase(dict(name="rft", threshold=1.0)))
