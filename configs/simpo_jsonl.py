"""SimPO on addition preference pairs (Meng et al. 2024, "SimPO: Simple Preference
Optimization with a Reference-Free Reward"): the length-normalised log-likelihood as the
implicit reward, beta 2.0 and target margin gamma 0.5, no reference model. The DPO job's data,
warm start, optimizer and budget.

  python -m rlalign.data.addition --pairs_out=/tmp/pairs
  python -m rlalign.main \
      --config=configs/simpo_jsonl.py:/tmp/pairs/train.jsonl,/tmp/pairs/test.jsonl \
      --workdir=/tmp/simpo

RESULT
"""
from rlalign import presets


def get_config(arg: str = ""):
  return presets.addition_preference(
      arg, dict(objective=dict(name="simpo", beta=2.0, gamma=0.5)), "simpo_jsonl.py")
