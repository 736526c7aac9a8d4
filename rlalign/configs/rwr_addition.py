"""Reward-weighted regression on the default task (Peters & Schaal 2007; the loss of RISE, Qu
et al. 2024): the log-likelihood of every sample, weighted by exp(r / tau) normalised over the
batch. tau 0.2 was fixed before any run so that, with 0/1 rewards, a failed sample weighs
exp(-5), under 1%, of a correct one. Otherwise the GRPO job's warm start, optimizer and budget,
with one minibatch so that the weights normalise over the whole batch.

  python -m rlalign.main --config=configs/rwr_addition.py --workdir=/tmp/rwr

Measured on 2 shared CPU cores (82 s wall, warm start included): held-out greedy pass@1 0.180
after the warm start -> 1.000 after RL, sampled (T=1) 0.291 -> 0.994.
"""
from rlalign import presets


def get_config(arg: str = ""):
  return presets.addition_rl(arg, presets.rl_phase(dict(name="rwr", tau=0.2), minibatches=1))
