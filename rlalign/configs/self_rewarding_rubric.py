"""Self-Rewarding on the rubric task: one model writes digit strings under four constraints and
judges them with an additive five-point rubric, and its own best and worst answers train it by
DPO, three rounds (``recipes/self_rewarding.py``; the task is ``data/rubric.py``).

  python -m rlalign.main --config=configs/self_rewarding_rubric.py --workdir=/tmp/self_rewarding
  python -m rlalign.studies.self_rewarding --out=/tmp/self_rewarding_study  # every arm, PNG

Every arm has the same warm start (SFT on a sloppy teacher that meets each constraint 40% of
the time, erring the same way otherwise), the same judge seed (the model's own samples of the
train prompts, each answered "Score: k" by the gold rubric, the paper's EFT data, and the
meta-judge's task on them: the gold judgement against another score), and three
rounds of DPO, 32 prompts x 8 samples a step, as the paper's iterations: the responses of
round k come from the model as the round began (M_k, the round's reference, which
``sample_from`` makes the sampler), never from the policy being trained, and the judge's best
and worst of each eight are the pair. The argument picks who judges in the rounds:

  self    (default) the model as it was when the round began (the round's reference):
          Self-Rewarding
  meta    the same judge, and each step also trains the judging: 64 of the responses are
          judged twice (temperature 1), the model as meta-judge picks the better judgement
          ("...points? Score: 3 | Score: 4 which? " -> "A" or "B", both orders), and DPO
          prefers it: Meta-Rewarding (Wu et al. 2024)
  frozen  the model as it left the judge seed, for every round: a judge that never improves
  gold    the gold rubric itself: the ceiling, the only arm whose training reads it

The judge is asked "L5F3E8H7: 37218 points? " and writes "Score: 4"; the evaluator also asks
the policy to judge its own held-out samples, against the gold rubric, each evaluation.

Measured on 2 CPU cores (seed 0; 6.0 min for self, 9.2 meta, 5.3 frozen, 5.0 gold, beside
our tests), held out, gold greedy points / 5 after the judge seed -> after three rounds:
self 0.466 -> 0.510, meta 0.466 -> 0.295 (generation collapsed in round 3), frozen 0.466 ->
0.508, gold 0.466 -> 0.840. The judge's pairwise agreement with gold on its own samples fell
from 0.697 to 0.50 after the first round in every arm. The finding does not reproduce.
README.md, "Self-Rewarding and Meta-Rewarding", has every figure and reads them.

``,smoke`` shrinks any arm to seconds; ``hf:DIR[,smoke]`` starts the policy from a Hugging
Face checkpoint with its tokenizer and chat template, judged with the rubric in words
(``self_rewarding.RUBRIC``); ``scale:v5p-8`` and ``scale:8xh100`` are a Qwen2.5-1.5B-shaped
policy for --dry_run.
"""
import ml_collections

from rlalign import presets

ROUNDS = 3
JUDGE = dict(template=dict(prefix="", middle=" ", suffix=" points? "), max_score=5,
             max_new_tokens=10)
META = dict(between=" | ", question=" which? ", first="A", second="B")
ARMS = ("self", "meta", "frozen", "gold")
SMOKE = dict(warm_start=dict(steps=4, batch_size=16),
             judge_seed=dict(steps=4, batch_size=8, group_size=2),
             **{f"round_{k}": dict(steps=4, batch_size=16, group_size=4)
                for k in range(1, ROUNDS + 1)})


def arm_config(arm: str) -> ml_collections.ConfigDict:
  if arm not in ARMS:
    raise ValueError(f"unknown arm {arm!r}; expected one of {list(ARMS)}")
  c = ml_collections.ConfigDict()
  presets.addition_task(c)
  c.model.vocab_size = 128
  c.data = dict(task="rubric", data_dir="", alphabet="ascii", honor=0.4, num_train=50_000,
                num_test=256, max_prompt_len=10, max_answer_len=8)
  c.sampling.max_new_tokens = 8
  c.train.eval_every = 25
  c.train.eval_judges = {"points": {"name": "rubric_points"}}  # eval/points_*: gold points / 5
  roles = dict(policy=dict(optimizer=dict(presets.PREFERENCE_OPTIMIZER)))
  if arm == "frozen":  # copied when round 1 first reads it: after the judge seed
    roles["judge"] = dict(weights=dict(source="role", role="policy"), trainable=False)
  phases = dict(
      # Both plateau well within their steps (the first run's held-out points by step 150
      # of the warm start; the judge's exact score by step 75 of the seed).
      warm_start=presets.sft_phase(**dict(presets.ADDITION_WARM_START, steps=500)),
      judge_seed=dict(presets.sft_phase(steps=150, batch_size=64,
                                        optimizer=dict(learning_rate=1e-3, warmup_steps=30)),
                      group_size=4, rewards={"rubric_points": 1.0}))
  for k in range(1, ROUNDS + 1):
    reference = f"reference_{k}"
    roles[reference] = dict(weights=dict(source="role", role="policy"), trainable=False)
    judge = {"self": reference, "meta": reference, "frozen": "judge"}.get(arm)
    rewards = ({"rubric_points": 1.0} if judge is None else
               {"judge": dict(JUDGE, name="judge_score", role=judge)})
    phases[f"round_{k}"] = dict(
        steps=100, batch_size=256, group_size=8, epochs=1, minibatches=2, rewards=rewards,
        objective=dict(name="online_dpo", beta=0.5, label_smoothing=0.0),
        slots={"reference": reference}, sample_from="reference")
  c.roles, c.phases = roles, phases
  c.recipe = dict(name="self_rewarding", before=("warm_start",), seed_phase="judge_seed",
                  seed_reward="rubric_points",
                  rounds=tuple(f"round_{k}" for k in range(1, ROUNDS + 1)),
                  judge=dict(JUDGE, role="policy"), oracle=arm == "gold", eval_samples=4,
                  meta=dict(META), meta_rounds=arm == "meta", meta_share=0.25)
  return c


def hf_config(hf_dir: str) -> ml_collections.ConfigDict:
  """Self-Rewarding from a Hugging Face checkpoint: its tokenizer and chat template read the
  prompts, the judge reads the rubric in words, sampling stops at its EOS, and the policy is
  exported back to ``<workdir>/hf``."""
  from rlalign.recipes import self_rewarding  # the rubric's words
  c = arm_config("self")
  presets.start_from_hf(c, hf_dir, "policy", "self_rewarding_rubric")
  c.data.alphabet = ""  # the checkpoint's tokenizer
  t = self_rewarding.RUBRIC
  words = dict(prefix=t.prefix, middle=t.middle, suffix=t.suffix)
  c.recipe.judge.template = dict(words)
  for k in range(1, ROUNDS + 1):
    c.phases[f"round_{k}"].rewards.judge.template = dict(words)
  return c


def scale_config(target: str) -> ml_collections.ConfigDict:
  """Self-Rewarding at real scale, for ``--dry_run``: a Qwen2.5-1.5B-shaped policy, its
  reference (which judges, writing up to 16 tokens after the whole response), 256-token
  prompts and 512 new tokens, FSDP over the target's devices.

    python -m rlalign.main --config=configs/self_rewarding_rubric.py:scale:v5p-8 \
        --workdir=DIR --dry_run --device_memory_gib=95   # on a CPU: device_count=4

  ``--config.recipe.meta_rounds=True`` dry-runs the Meta-Rewarding round instead.
  """
  c = arm_config("self")
  presets.at_scale(c, target, "self_rewarding_rubric")
  rollouts = 32 * 8
  for k in range(1, ROUNDS + 1):
    c.phases[f"round_{k}"].update(batch_size=rollouts, minibatches=rollouts // 64)
  return c


def get_config(arg: str = "self"):
  return presets.recipe_config(arg, "self", arm_config, hf_config, scale_config, SMOKE)
