"""SPARK on reversed-digit addition: one policy trained by GRPO on its answers and on
verifier tasks recycled from them, against GRPO alone (``recipes/spark.py``).

  python -m rlalign.main --config=configs/spark_addition.py --workdir=/tmp/spark
  python -m rlalign.main --config=configs/spark_addition.py:grpo --workdir=/tmp/spark_grpo
  python -m rlalign.studies.spark --out=/tmp/spark_study   # both arms, table and PNG

The task is the main job's (3-digit operands, the sloppy teacher's warm start), in printable
ASCII so that the verifier tasks can be asked in words after an answer. Verification is not
easier than generation here: checking "740+580=231" takes the same column sums and carries
as writing it. What the task isolates is whether one model learns to judge answers from its
own rollouts' labels while it learns to write them, and whether it can then use that, at
test time, without a separate reward model.

The argument picks the arm, each with the same warm start, optimizer, prompts and 300
iterations of 32 prompts x 8 samples:

  spark  (default) GRPO on the answers and on pointwise, pairwise and reflection tasks built
         from them each iteration (8 responses per task), in one update
  grpo   GRPO on the answers alone (tasks=()), evaluated the same way

``,smoke`` shrinks either to seconds; ``hf:DIR[,smoke]`` starts the policy from a Hugging
Face checkpoint with its tokenizer and chat template (each task's question is the user's next
turn); ``scale:v5p-8`` and ``scale:8xh100`` are a Qwen2.5-1.5B-shaped policy for --dry_run.

Measured on 2 CPU cores (seed 0; 8.0 min for spark, 2.6 for grpo), held out: generation
0.170 -> 0.998 greedy (grpo 1.000). The policy did not learn to verify. On the balanced
gold-vs-near-miss benchmark its pointwise verdicts score 0.500 (it says "yes" to everything
from iteration 75 on) and its pairwise ones 0.461, where grpo's untrained verdicts score
0.500 and 0.500. Self-verified best of 4 is 0.986 against one sample's 0.991. The finding
does not reproduce. README.md, "SPARK", has every figure and reads them.
"""

import ml_collections

from rlalign import presets
from rlalign.recipes import spark

ARMS = {"spark": dict(), "grpo": dict(tasks=())}
SMOKE = dict(warm_start=dict(steps=4, batch_size=16),
             spark=dict(steps=4, batch_size=16, group_size=4))


def arm_config(arm: str) -> ml_collections.ConfigDict:
  if arm not in ARMS:
    raise ValueError(f"unknown arm {arm!r}; expected one of {sorted(ARMS)}")
  c = ml_collections.ConfigDict()
  presets.ascii_addition_task(c)
  c.train.eval_every = 25   # the curves over iterations
  c.roles = presets.policy_and_reference(optimizer=dict(presets.ADDITION_RL_OPTIMIZER))
  c.phases = dict(
      warm_start=presets.sft_phase(**presets.ADDITION_WARM_START),
      spark=presets.grpo_phase(steps=300, batch_size=256, group_size=8, minibatches=2))
  # A model that has only ever written digits answers in digits: its verdicts are digits
  # too (a chat model's config keeps the words), and the questions are short.
  c.recipe = dict(name="spark", before=("warm_start",), phase="spark", judge="exact_match",
                  eval_samples=4, yes="1", no="0", first="1", second="2",
                  pointwise=" right? ", pair_between=" or ", pairwise=" which? ",
                  reflection=" wrong, so ", restate_prompt=True, **ARMS[arm])
  return c


def hf_config(hf_dir: str) -> ml_collections.ConfigDict:
  """The SPARK arm from a Hugging Face checkpoint: its tokenizer and chat template read the
  prompts and ask each task's question as the user's next turn; sampling stops at its EOS;
  the policy is exported back to ``<workdir>/hf``."""
  c = arm_config("spark")
  presets.start_from_hf(c, hf_dir, "policy", "spark_addition")
  c.data.alphabet = ""  # the checkpoint's tokenizer
  c.sampling.max_new_tokens = 8
  # A chat model answers in words, asked in sentences.
  defaults = spark.SPARKSettings()
  c.recipe.update({k: getattr(defaults, k) for k in (
      "yes", "no", "first", "second", "pointwise", "pair_between", "pairwise", "reflection",
      "restate_prompt")})
  return c


def scale_config(target: str) -> ml_collections.ConfigDict:
  """SPARK at real scale, for ``--dry_run``: a Qwen2.5-1.5B-shaped policy and its frozen
  reference, 256-token prompts and 512 new tokens, three tasks per prompt (the pairwise one
  holds two answers: the KV cache is sized for it), FSDP over the target's devices.

    python -m rlalign.main --config=configs/spark_addition.py:scale:v5p-8 --workdir=DIR \
        --dry_run --device_memory_gib=95   # on a CPU: device_count=4
  """
  c = arm_config("spark")
  presets.at_scale(c, target, "spark_addition")
  # Answers and three tasks' responses: 4 x rollouts rows a step, which the reference scores
  # all at once (its log-probs over the vocabulary dominate the peak), so half the e2h and
  # RISE dry runs' 32 prompts: at 32, v5p-8 peaks at 119 GiB. Minibatches of 64 rows
  # (the recipe makes 4 x minibatches of them).
  rollouts = 16 * 8
  c.phases.spark.update(batch_size=rollouts, minibatches=rollouts // 64)
  return c


def get_config(arg: str = "spark"):
  return presets.recipe_config(arg, "spark", arm_config, hf_config, scale_config, SMOKE)
