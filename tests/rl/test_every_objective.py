"""Every registered objective through the real step on a tiny model: it compiles once over
several steps, its loss is finite, and it moves the params of every role it trains.

The roles are built from what the objective declares (the fields each trained slot reads, the
frozen slots it reads, whether it needs a reference), so a new objective is covered here by
registering itself.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlalign import objectives
from rlalign.data import pipeline
from rlalign.models import transformer as tfm
from rlalign.profiling import count_compilations
from rlalign.rewards.base import RewardTerm
from rlalign.rewards.learned import RewardModelSettings
from rlalign.rl import iteration, offline
from rlalign.rl import roles as roles_lib
from rlalign.rl import state as state_lib
from rlalign.rl import update
from rlalign.sampling import SamplingConfig
from tests.rl.test_iteration import MODEL, PROBLEMS, TOKENIZER

DATA = pipeline.DataConfig(data_dir="unused", max_prompt_len=8, max_answer_len=4)
LM_FIELDS = {"logprobs", "entropy", "logits"}
# Settings under which an untrained model's rollouts give a gradient at all.
HPARAMS = {"rft": dict(threshold=-100.0)}


def model_for(fields):
  heads = tuple(h for h, wanted in (("lm", LM_FIELDS),
                                    ("scalar", {"values", "scores", "step_scores"}))
                if wanted & set(fields))
  return tfm.ModelConfig(**{**MODEL.__dict__, "heads": heads})


def binding_for(objective):
  optimizer = state_lib.make_optimizer(state_lib.OptimizerConfig(learning_rate=1e-2))
  roles = {slot: roles_lib.RoleSpec(model_for(fields), optimizer)
           for slot, fields in objective.trains.items()}
  for slot in objective.reads:
    roles[slot] = roles_lib.RoleSpec(model_for(("logprobs",)))
  hparams = objective.hparams(**HPARAMS.get(objective.name, {}))
  reference = objective.batch == "rollouts" or objective.needs_reference(hparams)
  if reference:
    roles["reference"] = roles_lib.RoleSpec(model_for(("logprobs",)))
  if objective.batch == "rollouts":  # a random reward model: rewards that differ in a group
    roles["rm"] = roles_lib.RoleSpec(model_for(("scores",)))
  return update.Binding(objective, hparams, roles, {}), reference


def encoded(problems, step_labels=False):
  """A batch of every offline kind; with ``step_labels``, a scored batch's labels are per
  step (a PRM's): the row's verdict at its last completion token, -1 elsewhere."""
  batch = _encoded(problems)
  if step_labels:
    mask = batch["completion_mask"]
    last = mask.sum(axis=1) - 1
    labels = np.full(mask.shape, -1.0, np.float32)
    labels[np.arange(len(last)), last] = batch["labels"]
    batch["step_labels"] = labels
  return batch


def _encoded(problems):
  rows = []
  for i, (prompt, answer) in enumerate(problems):
    wrong = answer[::-1] + "9" if len(answer) < 3 else answer[1:]
    rows.append(pipeline.encode_example(
        {"prompt": prompt.encode(), "answer": answer.encode(), "demonstration": answer.encode(),
         "chosen": answer.encode(), "rejected": wrong.encode()}, TOKENIZER, DATA))
    rows[-1]["completion_tokens"] = rows[-1]["chosen_tokens" if i % 2 else "rejected_tokens"]
    rows[-1]["completion_mask"] = rows[-1]["chosen_mask" if i % 2 else "rejected_mask"]
    rows[-1]["labels"] = np.float32(i % 2)
  return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def make_step(objective):
  binding, reference = binding_for(objective)
  if objective.batch == "rollouts":
    rl = iteration.RLConfig(batch_size=8, group_size=2, advantage=objective.advantage,
                            rewards=(RewardTerm("exact_match"), RewardTerm(
                                "reward_model", settings=RewardModelSettings(role="rm"))))
    spec = iteration.IterationSpec(
        SamplingConfig(max_new_tokens=4, stop_tokens=(TOKENIZER.eos_id,)), rl, binding)
    return iteration.make_rl_step(spec), binding
  spec = offline.OfflineSpec(binding, "reference" if reference else None)
  return offline.make_offline_step(spec), binding


@pytest.mark.slow
@pytest.mark.parametrize("name", objectives.names())
def test_objective_compiles_once_and_trains_its_roles(name):
  objective = objectives.get(name)
  step, binding = make_step(objective)
  params = {name_: tfm.init(spec.model, jax.random.key(i))
            for i, (name_, spec) in enumerate(sorted(binding.roles.items()))}
  trained = {r: params[r] for r in binding.trained_roles}
  frozen = {r: p for r, p in params.items() if r not in trained}
  before = jax.tree.map(np.asarray, trained)
  state = state_lib.init_state(jax.tree.map(jnp.array, trained),
                               {r: binding.roles[r].optimizer for r in trained})
  rng = jax.random.key(0)
  with count_compilations() as compiles:
    for start in (0, 4):
      state, metrics = step(state, encoded(PROBLEMS[start:start + 4], step_labels=any(
          "step_scores" in f for f in objective.trains.values())), rng, frozen)
    jax.block_until_ready(state)
  assert compiles.count == 1, f"{name} compiled {compiles.count} times"
  assert np.isfinite(float(metrics["loss"])), metrics
  for role in trained:
    moved = jax.tree.leaves(jax.tree.map(
        lambda a, b: np.abs(np.asarray(a) - b).max(), state["roles"][role]["params"],
        before[role]))
    assert max(moved) > 0, f"{name} did not update role {role!r}"
