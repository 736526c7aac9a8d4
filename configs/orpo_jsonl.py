"""ORPO on addition preference pairs (Hong et al. 2024, "ORPO: Monolithic Preference
Optimization without Reference Model"): the chosen answer's NLL plus lambda 0.1 times the
odds-ratio loss, no reference model. The DPO job's data, warm start, optimizer and budget.

  python -m rlalign.data.addition --pairs_out=/tmp/pairs
  python -m rlalign.main \
      --config=configs/orpo_jsonl.py:/tmp/pairs/train.jsonl,/tmp/pairs/test.jsonl \
      --workdir=/tmp/orpo

RESULT
"""
from rlalign import presets


def get_config(arg: str = ""):
  return presets.addition_preference(
      arg, dict(objective=dict(name="orpo", lam=0.1)), "orpo_jsonl.py")
