"""RLHF in one run: a warm start, a Bradley-Terry reward model on preference pairs, then GRPO
whose only reward is that learned model.

The argument is a JSONL file of preference pairs and a held-out one, as for dpo_jsonl.py;
``rlalign.data.addition`` writes them for reversed-digit addition ("chosen" the correct sum,
"rejected" mostly the sloppy teacher's carry mistake, "demonstration" the teacher's answer):

  python -m rlalign.data.addition --pairs_out=/tmp/pairs
  python -m rlalign.main \
      --config=configs/grpo_reward_model.py:/tmp/pairs/train.jsonl,/tmp/pairs/test.jsonl \
      --workdir=/tmp/rlalign_rm

Three phases of the ``sequence`` recipe:

  warm_start  sft of the policy on the sloppy teacher's demonstrations
  rm          bradley_terry on the pairs, slot ``model`` bound to the ``reward_model`` role:
              the warm-started backbone (copied from the policy as the phase starts) with a
              fresh scalar head at zero, trained with its own optimizer
  rl          grpo whose reward is the reward model's score alone; the frozen reference is
              the warm-started policy (kl_coef 1e-3, as in grpo_addition.py)

The exact-match verifier is never a training reward: it is only the held-out judge
(``train.eval_judges``' default ``pass@1``), so ``eval/pass@1_*`` is the gold measure of
what RL against the proxy did. The rm phase logs the reward model's held-out pair accuracy
as ``eval/rm/accuracy``; the rl phase logs the proxy, the mean reward-model score of its own
samples, as ``reward``.

Measured (2 shared CPU cores, 1.5 minutes; 512 held-out prompts and pairs). The reward model
reaches held-out pair accuracy 0.756 (``eval/rm/accuracy`` after 300 rm steps; 0.0 at its
start, when the zero head ties every pair). RL against it is reward hacking, plainly:

                        before rl (step 1100)   rl step 50   after 300 rl steps
  eval/pass@1_greedy    0.191                   0.016        0.000
  eval/pass@1_sampled   0.297                   0.023        0.000
  reward (proxy)        -                       3.35         3.46
  kl (per token)        0                       4.7          8.9

Gold exact match collapses within the first 50 RL steps while the learned reward climbs to a
plateau. In a run of this config with evaluations every 5 steps (before a change that only
reorders the pairs inside a minibatch, and so rounding), gold greedy pass@1 first rose to
0.361 at RL step 10, fell to 0.064 at step 20, and the policy ended up writing five digits and
no EOS ("14413", "14113", ... whatever the prompt): a completion unlike anything in the reward
model's pairs, which it scored 3.4, far above its mean score of the correct answers (0.2). That
reward model also ranked a constant "0001" above the correct answer on 92% of held-out prompts.
The same happened with kl_coef=0.1 (gold 0.000 after 300 steps) and with a better reward model
(1500 rm steps at learning rate 1e-3: held-out accuracy 0.875, then gold 0.018 after 50 RL
steps and 0.000 at the end, the policy writing "1011"/"0011" whatever the prompt).
"""
import ml_collections

from rlalign import presets


def get_config(arg: str = ""):
  c = ml_collections.ConfigDict()
  presets.addition_pairs_task(c, arg, "grpo_reward_model.py")
  c.roles = dict(
      **presets.policy_and_reference(
          optimizer=dict(learning_rate=5e-4, warmup_steps=10, max_grad_norm=1.0)),
      reward_model=dict(heads=("scalar",), weights=dict(source="role", role="policy"),
                        trainable=True,
                        optimizer=dict(learning_rate=3e-4, warmup_steps=10, max_grad_norm=1.0)),
  )
  c.phases = dict(
      warm_start=presets.sft_phase(steps=800, batch_size=64,
                                   optimizer=dict(learning_rate=3e-3, warmup_steps=100)),
      rm=dict(steps=300, batch_size=64, objective=dict(name="bradley_terry"),
              slots=dict(model="reward_model")),
      rl=presets.grpo_phase(steps=300, batch_size=256, group_size=8, minibatches=2,
                            rewards={"reward_model": {"role": "reward_model"}}),
  )
  c.recipe = dict(name="sequence", order=("warm_start", "rm", "rl"))
  return ml_collections.ConfigDict(c.to_dict())
