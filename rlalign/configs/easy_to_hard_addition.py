"""Easy-to-hard transfer on addition: labels for 3-digit problems only, judged on 4-digit ones.

  python -m rlalign.main --config=configs/easy_to_hard_addition.py:cotrain --workdir=/tmp/e2h
  python -m rlalign.studies.easy_to_hard --out=/tmp/e2h_study   # every arm, table and PNG

The task (``data.hard_digits``, ``rlalign.data.addition.generate_easy_hard``): reversed-digit
addition with operands padded to 4 digits. Easy problems have both operands below 1000 and
come with their answer and the sloppy teacher's demonstration; hard ones have an operand of
4 digits and, in the train split (half its rows), no answer and no demonstration. Their gold
answers exist only in the held-out split ``test_hard``, which only the evaluator reads. The
warm start imitates the teacher on easy problems; then the generator (GRPO, the main job's
budget) and a verifier (a scalar head on a copy of the warm start, trained on the generator's
samples of easy prompts) alternate for 300 iterations. The argument picks the reward on hard
prompts, the arm (``recipes/easy_to_hard.py``):

  cotrain          the verifier's P(correct)
  cotrain_balanced the same, its verifier's loss weighing right and wrong samples equally
  majority         the group's majority answer (self-consistency)
  self_confidence  the generator's own confidence, exp(mean log p) of its answer
  easy_only        none: RL on easy prompts alone

``,smoke`` shrinks any arm to seconds (``easy_only,smoke``). ``hf:DIR`` (or ``hf:DIR,smoke``)
runs the co-trained arm from a Hugging Face checkpoint, its tokenizer and chat template.
``scale:v5p-8`` and ``scale:8xh100`` are a 1.5B generator plus a 1.5B verifier for
``--dry_run`` (see ``scale_config``).

Measured (about 4 minutes an arm on 2 CPU cores), gold greedy pass@1 on test_hard. Seed 0:
0.045 after the warm start; 0.494 with ``cotrain``, against 0.121 for ``easy_only``, 0.166
for ``majority`` and 0.107 for ``self_confidence`` (easy: 0.994, 1.000, 0.473, 0.344). Over
seeds 0-3, ``cotrain`` 0.494, 0.127, 0.438, 0.416 against ``easy_only`` 0.121, 0.352, 0.080,
0.275: better in 3 of 4, mean 0.369 against 0.207. In seed 1 the generator hacked its
verifier: the verifier's AUROC on the hard samples fell below 0.5 and the generator fell from
0.416 to 0.127. ``rlalign/studies/easy_to_hard.py`` runs the arms (``--seed``); README.md,
"Self-improvement without labels", has the tables and the reading.
"""

import ml_collections

from rlalign import presets

ARMS = {
    "easy_only": {},
    "majority": {"majority_vote": {"rows": "unlabelled"}},
    "self_confidence": {"self_confidence": {"rows": "unlabelled"}},
    "cotrain": {"verifier": {"name": "reward_model", "role": "verifier", "rows": "unlabelled",
                             "transforms": ("sigmoid",)}},
}
# Added after the first study: the plain verifier, trained on the generator's samples of easy
# prompts (soon nearly all right), learned to pass everything. This arm weighs its two
# classes equally in each batch (pointwise ``balanced``); nothing else changes.
ARMS["cotrain_balanced"] = ARMS["cotrain"]
VERIFIER = {"cotrain_balanced": dict(balanced=True)}
EASY_DIGITS, HARD_DIGITS = 3, 4


def arm_config(arm: str) -> ml_collections.ConfigDict:
  if arm not in ARMS:
    raise ValueError(f"unknown arm {arm!r}; expected one of {sorted(ARMS)}")
  c = ml_collections.ConfigDict()
  presets.addition_task(c)
  c.data.update(max_digits=EASY_DIGITS, hard_digits=HARD_DIGITS, hard_fraction=0.5,
                max_prompt_len=2 * HARD_DIGITS + 3, max_answer_len=HARD_DIGITS + 2,
                eval_splits=("test_hard",))
  c.sampling.max_new_tokens = HARD_DIGITS + 2
  c.roles = presets.generator_and_verifier("verifier")
  generator = {"policy": "generator"}
  rewards = {"exact_match": 1.0, **ARMS[arm]}
  # Half the warm start's rows are hard prompts without a demonstration: twice the main job's
  # batch gives it the same demonstrations per step.
  warm_start = dict(presets.ADDITION_WARM_START, batch_size=2 * 64)
  c.phases = dict(
      warm_start=dict(presets.sft_phase(**warm_start), slots=generator),
      generate=dict(presets.grpo_phase(steps=300, batch_size=256, group_size=8, minibatches=2,
                                       rewards=rewards), slots=generator),
      verify=dict(steps=300, batch_size=256,
                  objective=dict(name="pointwise", **VERIFIER.get(arm, {})),
                  slots={"model": "verifier"}),
  )
  c.recipe = dict(name="easy_to_hard", before=("warm_start",), generator_phase="generate",
                  verifier_phase="verify", label_reward="exact_match")
  return c


def hf_config(hf_dir: str) -> ml_collections.ConfigDict:
  """The co-trained arm from a Hugging Face checkpoint: the generator starts from ``hf_dir``
  (its tokenizer and chat template read the prompts; sampling stops at its EOS), the
  verifier from the warm-started generator with a fresh scalar head; the generator is
  exported back to ``<workdir>/hf_generator``."""
  c = arm_config("cotrain")
  presets.start_from_hf(c, hf_dir, "generator", "easy_to_hard_addition")
  return c


# --dry_run targets: (mesh ici over ("data", "fsdp", "tensor"), prompts per step), 8 samples
def scale_config(target: str) -> ml_collections.ConfigDict:
  """The co-trained arm at real scale, for ``--dry_run``: a Qwen2.5-1.5B-shaped generator,
  its frozen reference and a 1.5B verifier (the generator's backbone with a scalar head),
  256-token prompts and 512 new tokens, FSDP over the target's devices. A real run needs a
  tokenizer and weights by override (``data.tokenizer_dir``, ``roles.generator.weights``).

    python -m rlalign.main --config=configs/easy_to_hard_addition.py:scale:v5p-8 \
        --workdir=DIR --dry_run --device_memory_gib=95   # 4 chips: device_count=4 on a CPU
    XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m rlalign.main \
        --config=configs/easy_to_hard_addition.py:scale:8xh100 --workdir=DIR --dry_run \
        --device_memory_gib=80
  """
  c = arm_config("cotrain")
  presets.at_scale(c, target, "easy_to_hard_addition")
  rollouts = 32 * 8
  c.phases.generate.update(batch_size=rollouts, minibatches=rollouts // 64)
  c.phases.verify.update(batch_size=rollouts, minibatches=rollouts // 64)
  return c


def get_config(arg: str = "cotrain"):
  return presets.recipe_config(arg, "cotrain", arm_config, hf_config, scale_config, SMOKE)


SMOKE = dict(warm_start=dict(steps=4, batch_size=16),
             generate=dict(steps=4, batch_size=16, group_size=4),
             verify=dict(steps=4, batch_size=16))
