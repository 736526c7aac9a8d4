"""GRPO with truncated importance sampling (TIS; Yao et al. 2025, "Your Efficient RL Framework
Secretly Brings You Off-Policy RL Training").

pi_old is recomputed by the learner (``rescore_old_logprobs``) and every token's loss is
weighted by min(pi_learner_old / pi_sampler, 2), correcting for a sampler whose log-probs
differ from the learner's. On CPU in float32 the two agree to rounding (``tis_weight_mean``
stays at 1), so this run checks that the correction costs nothing; the weights matter with
bfloat16 sampling or another inference engine. Otherwise the GRPO job.

  python -m rlalign.main --config=configs/tis_addition.py --workdir=/tmp/tis

Measured on 2 shared CPU cores (78 s wall, warm start included): held-out greedy pass@1 0.180
after the warm start -> 1.000 after RL, sampled (T=1) 0.291 -> 0.996.
"""
from rlalign import presets


def get_config(arg: str = ""):
  return presets.addition_rl(arg, presets.rl_phase(
      dict(name="grpo", clip_eps=0.2, kl_coef=1e-3, tis_cap=2.0),
      advantage="group_norm", rescore_old_logprobs=True))
