"""GRPO on reversed-digit addition, after a warm start on a sloppy teacher.

The warm start imitates a teacher that drops each carry with probability 0.7, so it learns the
format and the column sums but carries unreliably. RL with an exact-match verifier (in-graph,
on token ids) must find the carries on its own; the whole RL iteration is one jitted program.
Two phases of the ``sequence`` recipe: ``warm_start`` (sft) then ``rl`` (grpo), with a
reference copied from the policy when RL starts.

  python -m rlalign.main --config=configs/grpo_addition.py --workdir=/tmp/rlalign_addition

Expected on 2 CPU cores, in about 2 minutes: held-out greedy pass@1 rises from 0.17 after
the warm start (it solves exactly the carry-free problems) to 1.00 after 300 GRPO steps, and
sampled (T=1) pass@1 from 0.30 to 0.99. ``:smoke`` shrinks everything to a seconds-long run
for tests.
"""
import ml_collections

from rlalign import presets


def get_config(arg: str = ""):
  c = ml_collections.ConfigDict()
  presets.addition_task(c)
  c.roles = presets.policy_and_reference(
      optimizer=dict(learning_rate=5e-4, warmup_steps=10, max_grad_norm=1.0))
  c.phases = dict(
      warm_start=presets.sft_phase(**presets.ADDITION_WARM_START),
      # adapter.lora_rank > 0 trains LoRA adapters on the warm-started (frozen) weights.
      rl=dict(presets.grpo_phase(steps=300, batch_size=256, group_size=8, minibatches=2),
              adapter=dict(lora_rank=0, lora_alpha=16.0,
                           lora_targets=r"layers/(q|k|v|o|gate|up|down)")),
  )
  c.recipe = dict(name="sequence", order=("warm_start", "rl"))
  return presets.with_smoke(c, arg, dict(warm_start=dict(steps=4, batch_size=16),
                                         rl=dict(steps=4, batch_size=16, group_size=4)))
