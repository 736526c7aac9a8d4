"""IPO on addition preference pairs (Azar et al. 2023, "A General Theoretical Paradigm to
Understand Learning from Human Preferences"): (h - 1/(2 tau))^2 on the pair's log-ratio margin
h, tau 0.1. The DPO job's data, warm start, optimizer and budget (``presets.addition_preference``).

  python -m rlalign.data.addition --pairs_out=/tmp/pairs
  python -m rlalign.main --config=configs/ipo_jsonl.py:/tmp/pairs/train.jsonl,/tmp/pairs/test.jsonl \
      --workdir=/tmp/ipo

Measured on 2 shared CPU cores (93 s wall): held-out pair accuracy 0.283 -> 0.994, held-out
greedy pass@1 0.191 -> 0.895, sampled 0.297 -> 0.666, gold win rate against the starting policy
0.685 (0.5: no change).
"""
from rlalign import presets


def get_config(arg: str = ""):
  return presets.addition_preference(
      arg, dict(objective=dict(name="ipo", tau=0.1, length_normalized=False)), "ipo_jsonl.py")
