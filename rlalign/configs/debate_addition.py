"""Multiagent finetuning by debate on reversed-digit addition, without labels: three generation
agents and three critic agents, each its own model, debate, and each learns its own part of
the debate that agrees with the majority (``recipes/debate.py``), against one model
self-training on the same debate, and on a majority vote of its samples.

  python -m rlalign.main --config=configs/debate_addition.py --workdir=/tmp/debate
  python -m rlalign.studies.debate --out=/tmp/debate_study   # every arm, table and PNG

The task is the main job's (3-digit operands, printable ASCII so that a critic can read
several answers), with one change made before any run: the sloppy teacher drops each carry
with probability 0.3, not 0.7. A consensus can only teach what the agents get right more
often than any one wrong answer; a teacher that drops most carries makes the dropped carry
the majority, and a majority vote would reinforce it. Answers are still wrong on most
problems with two carries or more, and the errors are independent draws, so three agents
disagree where a model is unsure.

Every arm has the same warm start (SFT on the teacher, 1000 steps), the same lesson in the
debate's form (200 steps: a critic's prompt "231,221,231|740+580=" quotes the model's own
three samples before the question, and the teacher's demonstration follows it; the
demonstration also follows the bare prompt), and three rounds of 50 steps of 64 prompts,
with no label read from then on: the debate's consensus is all the supervision. The argument
picks the arm:

  multiagent  (default) agent_0..2 and critic_0..2, six models copied from the warm start;
              two debate rounds; each model fine-tuned on its own rows (the paper's method)
  single      one model plays all six parts in the same debate and learns all their rows
              (the paper's single-agent finetuning)
  majority    one model answers three times, no critics; it learns its answers equal to
              their majority (self-consistency self-training)
  adapters    the multiagent arm with each agent a rank-8 LoRA adapter over the warm start

``,smoke`` shrinks any arm to seconds; ``hf:DIR[,smoke]`` starts every agent from a Hugging
Face checkpoint with its tokenizer and chat template; ``scale:v5p-8`` and ``scale:8xh100``
are six Qwen2.5-1.5B-shaped agents for --dry_run.

Measured on 2 CPU cores (seed 0; 6.0 min for multiagent, 4.5 single, 2.8 majority, 6.1
adapters), held out at temperature 1, before the first round -> after the third: the debate's
consensus 0.500 -> 0.734 (single 0.484 -> 0.758, adapters 0.500 -> 0.645), below the majority
of the round-1 answers the critics read (0.660 -> 0.965) and majority-vote self-training
alone (0.621 -> 0.980); round-1 answer diversity 0.47 -> 0.13 (single 0.17, majority 0.15),
the agents' pairwise KL under 0.03 nats. The finding does not reproduce. README.md,
"Multiagent finetuning by debate", has every figure and reads them.
"""
import ml_collections

from rlalign import presets

ROUNDS = 3
AGENTS = tuple(f"agent_{n}" for n in range(3))
CRITICS = tuple(f"critic_{n}" for n in range(3))
ARMS = {
    "multiagent": dict(agents=AGENTS, critics=CRITICS, debate_rounds=2),
    "single": dict(agents=("policy",) * 3, critics=("policy",) * 3, debate_rounds=2),
    "majority": dict(agents=("policy",) * 3, critics=(), debate_rounds=1),
    "adapters": dict(agents=AGENTS, critics=CRITICS, debate_rounds=2),
}
SMOKE = dict(warm_start=dict(steps=4, batch_size=16), debate_form=dict(steps=4, batch_size=8),
             **{f"round_{k}": dict(steps=4, batch_size=8) for k in range(1, ROUNDS + 1)})


def arm_config(arm: str) -> ml_collections.ConfigDict:
  if arm not in ARMS:
    raise ValueError(f"unknown arm {arm!r}; expected one of {sorted(ARMS)}")
  spec = ARMS[arm]
  c = ml_collections.ConfigDict()
  presets.ascii_addition_task(c)
  c.data.update(carry_drop=0.3, num_test=256)
  c.train.eval_every = 25
  # The preference family's fine-tuning rate: at the RL family's 5e-4 and 32 prompts a step,
  # self-training on the majority collapsed or climbed by the draw of the data (held-out
  # greedy 0.71 -> 0.11 or -> 0.81 in 40 steps, two streams), which no comparison survives.
  optimizer = dict(presets.PREFERENCE_OPTIMIZER)
  roles = dict(policy=dict(optimizer=dict(optimizer)))
  for role in dict.fromkeys(spec["agents"] + spec["critics"]):
    if role != "policy":  # copied from the policy when round 1 first reads it
      roles[role] = dict(weights=dict(source="role", role="policy"), optimizer=dict(optimizer))
      if arm == "adapters":
        roles[role]["adapter"] = dict(lora_rank=8, lora_alpha=16.0)
  c.roles = roles
  phases = dict(
      warm_start=presets.sft_phase(**presets.ADDITION_WARM_START),
      # 200 steps: at 100 its loss still fell (0.41 -> 0.37 over the last 20), and a critic's
      # held-out answers were right 0.27 of the time against the agents' 0.49.
      debate_form=presets.sft_phase(steps=200, batch_size=64,
                                    optimizer=dict(learning_rate=1e-3, warmup_steps=10)))
  for k in range(1, ROUNDS + 1):
    phases[f"round_{k}"] = dict(steps=50, batch_size=64, objective=dict(name="sft"),
                                slots={"policy": spec["agents"][0]})
  c.phases = phases
  c.recipe = dict(name="debate", before=("warm_start",), format_phase="debate_form",
                  rounds=tuple(f"round_{k}" for k in range(1, ROUNDS + 1)), separator=",",
                  before_question="|", kept_share=1.0, min_votes=2, gold="exact_match",
                  **spec)
  return c


def hf_config(hf_dir: str) -> ml_collections.ConfigDict:
  """The debate from a Hugging Face checkpoint: the policy starts from ``hf_dir`` (its
  tokenizer and chat template read the prompts; sampling stops at its EOS), every agent from
  the policy after the debate's form; a critic reads the answers, ", " between them, then a
  new line and the templated prompt; agent_0 is exported to ``<workdir>/hf_agent_0``."""
  c = arm_config("multiagent")
  presets.start_from_hf(c, hf_dir, "policy", "debate_addition")
  c.data.alphabet = ""  # the checkpoint's tokenizer
  c.sampling.max_new_tokens = 8
  c.recipe.update(separator=", ", before_question="\n")
  c.roles.agent_0.export_hf = True
  return c


def scale_config(target: str) -> ml_collections.ConfigDict:
  """The debate at real scale, for ``--dry_run``: six Qwen2.5-1.5B-shaped agents, 256-token
  prompts and 512 new tokens (a critic reads the prompt and three answers), FSDP over the
  target's devices.

    python -m rlalign.main --config=configs/debate_addition.py:scale:v5p-8 --workdir=DIR \
        --dry_run --device_memory_gib=95   # on a CPU: device_count=4
  """
  c = arm_config("multiagent")
  presets.at_scale(c, target, "debate_addition")
  # 32 prompts a step; each role's rows in 4 updates of 8: in one update of all 32, a
  # critic's rows (2,308-token prompts) need 109 / 85 GiB per device.
  for k in range(1, ROUNDS + 1):
    c.phases[f"round_{k}"].update(batch_size=32, minibatches=4)
  return c


def get_config(arg: str = "multiagent"):
  return presets.recipe_config(arg, "multiagent", arm_config, hf_config, scale_config, SMOKE)
