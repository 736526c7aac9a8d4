"""RL Tango on reversed-digit addition: a generator and a step verifier, both trained by RL
from outcome labels only (``recipes/tango.py``), against GRPO alone and a frozen verifier.

  python -m rlalign.main --config=configs/tango_addition.py --workdir=/tmp/tango
  python -m rlalign.main --config=configs/tango_addition.py:grpo --workdir=/tmp/tango_grpo
  python -m rlalign.studies.tango --out=/tmp/tango_study   # every arm, table and PNG

The task is the main job's (3-digit operands, the sloppy teacher's warm start, which drops
carries), in printable ASCII so that the verifier is asked in words. A step is one digit of
the answer (least significant first), so a wrong answer has wrong steps exactly where a
carry went wrong; the verifier writes one verdict per digit ("1" right, "0" wrong) after
"740+580=231 steps? ", and is rewarded only by whether "all 1" matches the outcome.
Verification is not easier than generation here: judging a digit takes the same column sum
as writing it. What the task isolates is whether an outcome-only reward teaches a verifier
to find the wrong step, and whether its step scores help the generator.

The argument picks the arm, each with the same warm start, optimizer, prompts and 300
iterations of 32 prompts x 8 samples for the generator and 32 posed completions x 8 verdict
strings for the verifier:

  tango   (default) the generator's reward is exact match + 0.5 x the verifier's step
          scores; the verifier trains each iteration
  frozen  the same reward, the verifier never trained (train_verifier=False): the ablation
  grpo    exact match alone; the step scores are a monitor, the verifier trains beside it,
          unused: GRPO's iteration bit for bit, and a measure of the verifier on its samples

The second design, ``tango_4d``, ``frozen_4d`` and ``grpo_4d``, is the same with 4-digit
operands. It was added after the first design's runs, where the generator was right on 97%
of its samples within 75 iterations, before the verifier had learned its format, so that
the verifier had almost no wrong completion left to learn from.

``,smoke`` shrinks any arm to seconds; ``hf:DIR[,smoke]`` starts both roles from a Hugging
Face checkpoint with its tokenizer and chat template; ``scale:v5p-8`` and ``scale:8xh100`` are
a Qwen2.5-1.5B-shaped generator and verifier for --dry_run.

Measured on 2 CPU cores (seed 0; 4.7 min for tango, 3.4 frozen, 5.0 grpo), held out:
generation 0.166 -> 0.998 greedy (frozen 1.000, grpo 1.000), reaching 0.9 by iteration 75
(frozen 100, grpo 25). The verifier learned its format, not its verdict: from iteration 100
it passes every completion (false-positive rate 1.00), its step balanced accuracy is 0.500,
and on near misses its lowest step falls on the changed digit 0.28 of the time, chance. The
finding does not reproduce. In the 4-digit design the verifier never wrote one well-formed
verdict string. README.md, "RL Tango", has every figure and reads them.
"""

import ml_collections

from rlalign import presets

STEPS = {"name": "generative_step_verifier", "role": "verifier", "yes": "1", "no": "0",
         "template": {"middle": "", "suffix": " steps? "}}
ARMS = {
    "tango": dict(rewards={"exact_match": 1.0, "steps": dict(STEPS, weight=0.5)}),
    "frozen": dict(rewards={"exact_match": 1.0, "steps": dict(STEPS, weight=0.5)},
                   train_verifier=False),
    "grpo": dict(rewards={"exact_match": 1.0}, monitors={"steps": STEPS}),
}
SMOKE = dict(warm_start=dict(steps=4, batch_size=16),
             generate=dict(steps=4, batch_size=16, group_size=4),
             verify=dict(steps=4, batch_size=16, group_size=4))


# The second design: 4-digit operands, where wrong answers (the verifier's negatives) last
# longer; its arms are the first design's with "_4d".
WIDE = "_4d"


def arm_config(arm: str) -> ml_collections.ConfigDict:
  base_arm = arm[:-len(WIDE)] if arm.endswith(WIDE) else arm
  if base_arm not in ARMS:
    raise ValueError(f"unknown arm {arm!r}; expected one of {sorted(ARMS)}, each also with "
                     f"{WIDE!r} (4-digit operands)")
  spec = dict(ARMS[base_arm])
  c = ml_collections.ConfigDict()
  presets.ascii_addition_task(c)
  if arm.endswith(WIDE):
    digits = 4
    c.data.update(max_digits=digits, max_prompt_len=2 * digits + 3,
                  max_answer_len=digits + 2)
    c.sampling.max_new_tokens = digits + 2
  c.train.eval_every = 25   # the curves over iterations
  optimizer = dict(presets.ADDITION_RL_OPTIMIZER)
  # The verifier starts as the warm-started generator, which the frozen reference also
  # holds: the verifier's KL is to its own start.
  c.roles = dict(
      generator=dict(optimizer=optimizer),
      reference=dict(weights=dict(source="role", role="generator"), trainable=False),
      verifier=dict(weights=dict(source="role", role="generator"), optimizer=dict(optimizer)))
  generator = {"policy": "generator"}
  verdicts = {"verdict": {"name": "step_verdicts", "yes": STEPS["yes"], "no": STEPS["no"]}}
  c.phases = dict(
      warm_start=dict(presets.sft_phase(**presets.ADDITION_WARM_START), slots=generator),
      generate=dict(presets.grpo_phase(steps=300, batch_size=256, group_size=8, minibatches=2,
                                       rewards=spec.pop("rewards")),
                    monitors=spec.pop("monitors", {}), slots=generator),
      verify=dict(presets.grpo_phase(steps=300, batch_size=256, group_size=8, minibatches=2,
                                     rewards=verdicts), slots={"policy": "verifier"}))
  c.recipe = dict(name="tango", before=("warm_start",), generator_phase="generate",
                  verifier_phase="verify", label_reward="exact_match", step_reward="steps",
                  eval_samples=4, **spec)
  return c


def hf_config(hf_dir: str) -> ml_collections.ConfigDict:
  """RL Tango from a Hugging Face checkpoint: the generator starts from ``hf_dir`` (its
  tokenizer and chat template read the prompts; sampling stops at its EOS) and the verifier
  from the warm-started generator; a step verdict is "+" or "-", asked after the answer;
  the generator is exported back to ``<workdir>/hf_generator``."""
  c = arm_config("tango")
  presets.start_from_hf(c, hf_dir, "generator", "tango_addition")
  c.data.alphabet = ""  # the checkpoint's tokenizer
  c.sampling.max_new_tokens = 8
  words = dict(yes="+", no="-", template={"middle": "", "suffix": "\nCheck each step: "})
  c.phases.generate.rewards.steps.update(words)
  c.phases.verify.rewards.verdict.update(yes="+", no="-")
  return c


def scale_config(target: str) -> ml_collections.ConfigDict:
  """RL Tango at real scale, for ``--dry_run``: a Qwen2.5-1.5B-shaped generator, its frozen
  reference and a 1.5B verifier, 256-token prompts and 512 new tokens (the verifier's prompt
  holds the generator's whole completion, and it writes up to 512 verdicts), FSDP over the
  target's devices.

    python -m rlalign.main --config=configs/tango_addition.py:scale:v5p-8 --workdir=DIR \
        --dry_run --device_memory_gib=95   # on a CPU: device_count=4
  """
  c = arm_config("tango")
  presets.at_scale(c, target, "tango_addition")
  # The easy-to-hard and RISE dry runs' 32 prompts: the verifier's step scores read two
  # vocabulary rows, not all of them, and each model's update is its own rollouts only.
  rollouts = 32 * 8
  c.phases.generate.update(batch_size=rollouts, minibatches=rollouts // 64)
  c.phases.verify.update(batch_size=rollouts, minibatches=rollouts // 64)
  return c


def get_config(arg: str = "tango"):
  return presets.recipe_config(arg, "tango", arm_config, hf_config, scale_config, SMOKE)
