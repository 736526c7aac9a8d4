"""SimPO on addition preference pairs (Meng et al. 2024, "SimPO: Simple Preference
Optimization with a Reference-Free Reward"): the length-normalised log-likelihood as the
implicit reward, beta 2.0 and target margin gamma 0.5, no reference model. The DPO job's data,
warm start, optimizer and budget.

  python -m rlalign.data.addition --pairs_out=/tmp/pairs
  python -m rlalign.main \
      --config=configs/simpo_jsonl.py:/tmp/pairs/train.jsonl,/tmp/pairs/test.jsonl \
      --workdir=/tmp/simpo

Measured on 2 shared CPU cores (95 s wall): held-out pair accuracy 0.283 -> 0.996, held-out
greedy pass@1 0.191 -> 0.072, sampled 0.297 -> 0.059, gold win rate against the starting policy
0.381 (0.5: no change). The preference is learned but the policy gets worse under the gold
judge: the chosen answers' mean log-probability falls from -1.97 to -13.3 in 100 steps (no
reference anchors it) and recovers only to -4.98.
"""
from rlalign import presets


def get_config(arg: str = ""):
  return presets.addition_preference(
      arg, dict(objective=dict(name="simpo", beta=2.0, gamma=0.5)), "simpo_jsonl.py")
