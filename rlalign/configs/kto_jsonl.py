"""KTO on unpaired, labelled addition answers (Ethayarajh et al. 2024, "KTO: Model Alignment
as Prospect Theoretic Optimization"): each record is one answer marked desirable (the correct
sum) or undesirable (the sloppy teacher's mistake), never a pair; beta 0.1 and equal weights.
The DPO job's warm start, optimizer and budget, on the same problems written unpaired.

  python -m rlalign.data.addition --unpaired_out=/tmp/unpaired
  python -m rlalign.main \
      --config=configs/kto_jsonl.py:/tmp/unpaired/train.jsonl,/tmp/unpaired/test.jsonl \
      --workdir=/tmp/kto

Measured on 2 shared CPU cores (96 s wall): held-out greedy pass@1 0.197 -> 0.244, sampled
0.200 -> 0.189, gold win rate against the starting policy 0.495 (0.5: no change). The finding
that unpaired KTO matches DPO did not reproduce here: the implicit rewards separate (reward
accuracy 0.75) but z0 is clamped at 0 within a few dozen steps and the gold win rate stays at
chance.
"""
from rlalign import presets


def get_config(arg: str = ""):
  return presets.addition_preference(
      arg, dict(objective=dict(name="kto", beta=0.1, desirable_weight=1.0,
                               undesirable_weight=1.0)), "kto_jsonl.py")
