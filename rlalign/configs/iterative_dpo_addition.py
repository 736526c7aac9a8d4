"""Iterative DPO on the default task (Xu et al. 2023; Xiong et al. 2024, "Iterative Preference
Learning from Human Feedback"): online DPO in three rounds of 100 steps, each against a
reference refreshed to the policy as the round starts.

Each round is a phase of ``online_dpo`` (configs/online_dpo_addition.py) whose ``reference``
slot is bound to a role of its own, ``reference_<k>``, copied from the policy when that phase
first reads it: the start of its round, so after the rounds before it. No new code: a config
of roles and phases. The total budget, 300 steps, is the online job's.

  python -m rlalign.main --config=configs/iterative_dpo_addition.py --workdir=/tmp/iterative_dpo

Measured on 2 shared CPU cores (119 s wall, warm start included): held-out greedy pass@1 0.180
after the warm start -> 0.996 after RL, sampled (T=1) 0.291 -> 0.965.
"""
from rlalign import presets

ROUNDS = 3


def get_config(arg: str = ""):
  rounds, roles = {}, {}
  for k in range(1, ROUNDS + 1):
    roles[f"reference_{k}"] = dict(weights=dict(source="role", role="policy"), trainable=False)
    rounds[f"round_{k}"] = presets.rl_phase(
        dict(name="online_dpo", beta=0.5, label_smoothing=0.0),
        optimizer=dict(presets.PREFERENCE_OPTIMIZER), steps=300 // ROUNDS,
        slots={"reference": f"reference_{k}"})
  last = rounds.pop(f"round_{ROUNDS}")
  return presets.addition_rl(arg, last, roles=roles, before=rounds)
