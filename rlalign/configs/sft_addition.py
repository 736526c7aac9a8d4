"""Supervised fine-tuning as a phase of its own: the default task's warm start alone.

The loss is the token mean of -log pi over the demonstration only: the prompt is context, never
a target (with ``data.prompt_format="chat"`` the prompt is the chat template's user turn up to
the assistant's, and still only the assistant's reply is trained). The demonstrations are the
sloppy teacher's (carries dropped with probability 0.7), so held-out pass@1 can reach only the
carry-free problems' share.

  python -m rlalign.main --config=configs/sft_addition.py --workdir=/tmp/sft

Measured on 2 shared CPU cores (52 s wall): held-out greedy pass@1 0.000 -> 0.166, sampled
0.000 -> 0.279.
"""
import ml_collections

from rlalign import presets


def get_config(arg: str = ""):
  c = ml_collections.ConfigDict()
  presets.addition_task(c)
  c.roles = dict(policy=dict(optimizer=dict(presets.ADDITION_RL_OPTIMIZER)))
  c.phases = dict(sft=presets.sft_phase(**presets.ADDITION_WARM_START))
  c.recipe = dict(name="sequence", order=("sft",))
  return presets.with_smoke(c, arg, dict(sft=dict(steps=4, batch_size=16)))
