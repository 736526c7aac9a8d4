"""ORPO on addition preference pairs (Hong et al. 2024, "ORPO: Monolithic Preference
Optimization without Reference Model"): the chosen answer's NLL plus lambda 0.1 times the
odds-ratio loss, no reference model. The DPO job's data, warm start, optimizer and budget.

  python -m rlalign.data.addition --pairs_out=/tmp/pairs
  python -m rlalign.main \
      --config=configs/orpo_jsonl.py:/tmp/pairs/train.jsonl,/tmp/pairs/test.jsonl \
      --workdir=/tmp/orpo

Measured on 2 shared CPU cores (98 s wall): held-out pair accuracy 0.289 -> 1.000, held-out
greedy pass@1 0.191 -> 1.000, sampled 0.297 -> 0.945, gold win rate against the starting policy
0.824 (0.5: no change).
"""
from rlalign import presets


def get_config(arg: str = ""):
  return presets.addition_preference(
      arg, dict(objective=dict(name="orpo", lam=0.1)), "orpo_jsonl.py")
