"""On-policy distillation (GKD; Agarwal et al. 2024, "On-Policy Distillation of Language
Models: Learning from Self-Generated Mistakes") on the default task.

Three phases: the warm start; ``teacher``, the GRPO job's RL phase training a ``teacher`` role
copied from the warm-started policy; then ``rl``, where the warm-started policy (the student)
samples and learns the teacher's next-token distributions on its own samples under the
generalised JSD (beta 0.5). The student never sees a reward: exact match is only logged.

  python -m rlalign.main --config=configs/gkd_addition.py --workdir=/tmp/gkd

Measured on 2 shared CPU cores (187 s wall, all three phases): the teacher reaches held-out
greedy pass@1 0.992 (sampled 0.988); the student goes from 0.180 after the warm start to 0.992
after 300 distillation steps (sampled 0.291 -> 0.984), its JSD to the teacher falling from
0.050 to 0.0004.
"""
from rlalign import presets


def get_config(arg: str = ""):
  teacher = presets.grpo_phase(steps=300, batch_size=256, group_size=8, minibatches=2)
  teacher["slots"] = {"policy": "teacher"}
  return presets.addition_rl(
      arg, presets.rl_phase(dict(name="gkd", beta=0.5, temperature=1.0), group_size=1),
      roles=dict(teacher=dict(weights=dict(source="role", role="policy"), trainable=True,
                              optimizer=dict(presets.ADDITION_RL_OPTIMIZER))),
      before=dict(teacher=teacher))
