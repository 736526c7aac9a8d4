"""Two models on reversed-digit addition: a generator trained by GRPO and a verifier trained on
the generator's own samples, both updated every iteration (the ``alternating`` recipe).

After the main job's warm start, each iteration samples 8 completions for each of 32 prompts;
the generator takes a GRPO step on their exact-match rewards, and the verifier, a scalar head
on a copy of the warm-started backbone, takes a step of binary cross-entropy against the same
exact-match verdicts. One checkpoint holds both models, the data position, the RNG and the
recipe's running verifier accuracy; a run killed at any point resumes bit-identically.

  python -m rlalign.main --config=configs/cotrain_addition.py --workdir=/tmp/rlalign_cotrain

Measured on 2 CPU cores (4.1 minutes beside other jobs; sampling stops at EOS as in every
other recipe): the generator's held-out greedy pass@1 rises from 0.166 after the warm start to
0.994 (sampled: 0.303 to 0.988), as in the main job (the warm start differs from it only by
the role's name, from which its init key derives). The verifier does not learn to verify: its
balanced accuracy on completions it has not yet seen (``verifier/balanced_accuracy``) stays
within 0.50-0.63 and ends at 0.50. By
iteration 30 the generator is right on 90% of its own samples and soon on 99-100%, so the
verifier's labels are nearly all positive and "always correct" is optimal for its loss. This
recipe is the two-model skeleton, not a co-training method: the co-training recipes change
where labels come from. ``:smoke`` shrinks it to seconds.
"""
import ml_collections

from rlalign import presets


def get_config(arg: str = ""):
  c = ml_collections.ConfigDict()
  presets.addition_task(c)
  c.roles = presets.generator_and_verifier("verifier")
  generator = {"policy": "generator"}
  c.phases = dict(
      warm_start=dict(presets.sft_phase(**presets.ADDITION_WARM_START), slots=generator),
      generate=dict(presets.grpo_phase(steps=300, batch_size=256, group_size=8, minibatches=2),
                    slots=generator),
      verify=dict(steps=300, batch_size=256, objective=dict(name="pointwise"),
                  slots={"model": "verifier"}),
  )
  c.recipe = dict(name="alternating", before=("warm_start",), generator_phase="generate",
                  verifier_phase="verify", label_reward="exact_match")
  return presets.with_smoke(c, arg, dict(warm_start=dict(steps=4, batch_size=16),
                                         generate=dict(steps=4, batch_size=16, group_size=4),
                                         verify=dict(steps=4, batch_size=16)))
