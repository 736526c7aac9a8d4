"""RISE on addition with a hidden digit: a policy taught to use "that was wrong" over turns.

  python -m rlalign.main --config=configs/rise_addition.py --workdir=/tmp/rise
  python -m rlalign.main --config=configs/rise_addition.py:single_turn --workdir=/tmp/rise1
  python -m rlalign.studies.rise --out=/tmp/rise_study   # both arms, table and PNG

The task (``data.hidden_fraction``): the default reversed-digit addition (3-digit operands,
the sloppy teacher's warm start), except that half the prompts show the second operand's
units digit as "?". The answer is the true sum, so on those a first answer is a guess among
ten, and hearing that it was wrong rules one out: a second attempt has something to use,
and the best a policy can do is never to repeat a wrong guess. The prompts are printable
ASCII so that the feedback can be said in words: after a wrong answer the policy reads "The
answer is incorrect. Please try again." and then the question again (``restate_prompt``: a
model this small, which never saw an instruction, does not otherwise answer a second time),
in the same dialogue and KV cache. The warm start imitates the sloppy teacher on single
questions, then (``dialogue``, 300 steps) in the dialogue's form: the policy's own first
answer, the feedback where it was wrong, and the teacher's answer after it. RISE starts from
chat models that answer a second turn; without this phase the warm-started model's second
answers are never right, and best-of-4 has nothing to keep.

The argument picks the arm (``recipes/rise.py``), each with the same warm start, optimizer,
prompts and steps (150 iterations of 32 prompts x 8 samples):

  rise         (default) two turns per training rollout: a wrong first answer is followed
               by the best of 4 second answers sampled from its own history; RWR, tau 0.4,
               on every turn taken
  single_turn  RWR on first answers alone (turns=1): what training buys without dialogue

Both are evaluated over three turns, greedy, on the held-out problems (``eval/turn<k>_...``,
with the oracle that stops a right answer, and without it). ``,smoke`` shrinks either to
seconds; ``hf:DIR[,smoke]`` starts the policy from a Hugging Face checkpoint with its
tokenizer and chat template (the feedback is the user's next turn); ``scale:v5p-8`` and
``scale:8xh100`` are a Qwen2.5-1.5B-shaped policy for ``--dry_run``.

Measured on 2 CPU cores (seed 0; 7.3 min for rise, 3.7 for single_turn), held-out greedy
accuracy by turn 1 -> turn 2 with the oracle: rise 0.527 -> 0.566 (it fixes 8% of its wrong
first answers), single_turn 0.537 -> 0.543 (1%), the dialogue warm start 0.109 -> 0.109.
Over seeds 0-2 the second turn adds +0.039, +0.062, +0.010 for rise and +0.006, +0.008,
+0.006 for single_turn: 2 of 3 seeds. README.md, "RISE", has every figure and reads them.
"""

import ml_collections

from rlalign import presets

ARMS = {"rise": dict(turns=2, best_of=4), "single_turn": dict(turns=1, best_of=1)}
SMOKE = dict(warm_start=dict(steps=4, batch_size=16), dialogue=dict(steps=4, batch_size=16),
             rise=dict(steps=4, batch_size=16, group_size=4))


def arm_config(arm: str) -> ml_collections.ConfigDict:
  if arm not in ARMS:
    raise ValueError(f"unknown arm {arm!r}; expected one of {sorted(ARMS)}")
  c = ml_collections.ConfigDict()
  presets.ascii_addition_task(c)
  c.data.hidden_fraction = 0.5
  c.roles = presets.policy_and_reference(optimizer=dict(presets.ADDITION_RL_OPTIMIZER))
  c.phases = dict(
      warm_start=presets.sft_phase(**presets.ADDITION_WARM_START),
      # The same teacher in the dialogue's form (recipe.format_phase), a third as long.
      dialogue=presets.sft_phase(steps=300, batch_size=64,
                                 optimizer=dict(presets.ADDITION_WARM_START["optimizer"])),
      rise=presets.rl_phase(dict(name="rwr", tau=0.4), minibatches=1, steps=150))
  c.recipe = dict(name="rise", before=("warm_start",), format_phase="dialogue", phase="rise",
                  judge="exact_match", eval_turns=3, restate_prompt=True, **ARMS[arm])
  return c


def hf_config(hf_dir: str) -> ml_collections.ConfigDict:
  """The RISE arm from a Hugging Face checkpoint: its tokenizer and chat template read the
  prompts and say the feedback as the user's next turn; sampling stops at its EOS; the
  policy is exported back to ``<workdir>/hf``."""
  c = arm_config("rise")
  presets.start_from_hf(c, hf_dir, "policy", "rise_addition")
  c.data.alphabet = ""  # the checkpoint's tokenizer
  c.recipe.restate_prompt = False  # a chat model reads the question in its history
  return c


def scale_config(target: str) -> ml_collections.ConfigDict:
  """RISE at real scale, for ``--dry_run``: a Qwen2.5-1.5B-shaped policy and its frozen
  reference, 256-token prompts and 512 new tokens a turn, two turns with best-of-4, FSDP
  over the target's devices (the KV cache holds prompt, both turns and the feedback).

    python -m rlalign.main --config=configs/rise_addition.py:scale:v5p-8 --workdir=DIR \
        --dry_run --device_memory_gib=95   # on a CPU: device_count=4
  """
  c = arm_config("rise")
  presets.at_scale(c, target, "rise_addition")
  c.recipe.restate_prompt = False
  rollouts = 32 * 8
  # Both turns' examples (2 x rollouts rows) train in minibatches of 64, as the e2h recipe's
  # single turn does; RWR's weights then normalise within each minibatch.
  c.phases.rise.update(batch_size=rollouts, minibatches=2 * rollouts // 64)
  return c


def get_config(arg: str = "rise"):
  return presets.recipe_config(arg, "rise", arm_config, hf_config, scale_config, SMOKE)
