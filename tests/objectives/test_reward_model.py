"""Bradley-Terry reward-model training: the loss by hand, and one rm-phase offline step that
trains only the scalar-head role bound to the ``model`` slot."""

import math
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlalign import objectives
from rlalign.models import transformer as tfm
from rlalign.objectives import base, dpo, reward_model
from rlalign.rl import offline, update
from rlalign.rl import roles as roles_lib
from rlalign.rl import state as state_lib
from tests.configs import load_config

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _close(x, expected, tol=1e-5):
  chex.assert_trees_all_close(x, np.asarray(expected, np.float32), rtol=tol, atol=tol)


def _log_sigmoid(x):
  return -math.log1p(math.exp(-x))


# Three pairs: scores of rows 0..2 (chosen) then 3..5 (rejected).
SCORES = np.array([1.0, -0.5, 2.0, 0.0, 0.5, 2.0])
GAPS = [1.0, -1.0, 0.0]  # s_c - s_r


def _call(hp, scores=SCORES, batch=None):
  outputs = {"model": base.ModelOutputs(scores=jnp.asarray(scores, jnp.float32))}
  batch = batch or {"mask": jnp.ones((len(scores), 2), bool)}
  return reward_model.bradley_terry_loss(hp, outputs, batch)


def test_bradley_terry_loss_and_metrics_by_hand():
  loss, metrics = _call(reward_model.BradleyTerryConfig())
  chex.assert_shape(loss, ())
  expected = -sum(_log_sigmoid(g) for g in GAPS) / 3
  _close(loss, expected)
  _close(metrics["nll"], expected)
  _close(metrics["accuracy"], 1 / 3)  # a tie (gap 0) is not a win
  _close(metrics["margin"], 0.0)
  _close(metrics["chosen_score"], 2.5 / 3)
  _close(metrics["rejected_score"], 2.5 / 3)


def test_bradley_terry_margin_and_centering_by_hand():
  hp = reward_model.BradleyTerryConfig(margin=0.5, center_coef=0.1)
  loss, metrics = _call(hp)
  nll = -sum(_log_sigmoid(g - 0.5) for g in GAPS) / 3
  sums = [1.0 + 0.0, -0.5 + 0.5, 2.0 + 2.0]  # s_c + s_r
  _close(metrics["nll"], nll)
  _close(loss, nll + 0.1 * sum(x * x for x in sums) / 3)


def test_bradley_terry_gradient_by_hand():
  # d/ds_c of -log sigma(s_c - s_r) / B is -sigma(-(s_c - s_r)) / B; s_r gets the opposite.
  grad = np.asarray(jax.grad(lambda s: _call(reward_model.BradleyTerryConfig(), s)[0])(
      jnp.asarray(SCORES, jnp.float32)))
  sig = [1 / (1 + math.exp(g)) for g in GAPS]
  _close(grad, [-x / 3 for x in sig] + [x / 3 for x in sig])


def test_bradley_terry_registered_on_the_model_slot():
  objective = objectives.get("bradley_terry")
  assert objective.batch == "pairs"
  assert dict(objective.trains) == {"model": ("scores",)}
  assert not objective.needs_reference(reward_model.BradleyTerryConfig())


@pytest.mark.parametrize("kwargs, key", [(dict(margin=-1.0), "margin"),
                                         (dict(center_coef=-0.1), "center_coef")])
def test_bradley_terry_config_errors_name_the_key(kwargs, key):
  with pytest.raises(ValueError, match=rf"phases\.rm\.objective\.{key} must be >= 0"):
    reward_model.BradleyTerryConfig(**kwargs).validate("phases.rm.objective")


# ---------------------------------------------------------------- an rm-phase step

TINY = tfm.ModelConfig(vocab_size=8, d_model=16, n_layers=1, n_heads=2, n_kv_heads=1,
                       head_dim=8, d_ff=32)
SCALAR = tfm.ModelConfig(**{**TINY.__dict__, "heads": ("scalar",)})


def _pairs_batch():
  return {
      "prompt_tokens": jnp.array([[0, 1, 5], [1, 4, 6]], jnp.int32),
      "prompt_mask": jnp.array([[0, 1, 1], [1, 1, 1]], bool),
      "chosen_tokens": jnp.array([[3, 4, 2], [5, 2, 0]], jnp.int32),
      "chosen_mask": jnp.array([[1, 1, 1], [1, 1, 0]], bool),
      "rejected_tokens": jnp.array([[3, 7, 2], [6, 6, 2]], jnp.int32),
      "rejected_mask": jnp.array([[1, 1, 1], [1, 1, 1]], bool),
  }


def _scores(params, batch, side):
  tokens = jnp.concatenate([batch["prompt_tokens"], batch[f"{side}_tokens"]], axis=1)
  mask = jnp.concatenate([batch["prompt_mask"], batch[f"{side}_mask"]], axis=1)
  return tfm.sequence_scores(params, tokens, mask, SCALAR)


def test_rm_step_trains_only_the_reward_model_role():
  rng = jax.random.key(0, impl="rbg")
  policy = tfm.init(TINY, rng)
  # The reward model as the runtime copies it from the policy: its backbone, a zero head.
  rm = {**{k: v for k, v in tfm.init(SCALAR, rng).items() if k != "scalar_head"},
        **{k: policy[k] for k in policy if k != "lm_head"}}
  rm["scalar_head"] = jax.tree.map(jnp.zeros_like, tfm.init(SCALAR, rng)["scalar_head"])
  optimizer = state_lib.make_optimizer(state_lib.OptimizerConfig(learning_rate=3e-2))
  roles = {"reward_model": roles_lib.RoleSpec(SCALAR, optimizer),
           "policy": roles_lib.RoleSpec(TINY)}  # the runtime hands a phase the policy too
  binding = update.Binding(objectives.get("bradley_terry"), reward_model.BradleyTerryConfig(),
                           roles, {"model": "reward_model"})
  assert binding.trained_roles == ("reward_model",)
  step = offline.make_offline_step(offline.OfflineSpec(binding))
  state = state_lib.init_state({"reward_model": jax.tree.map(jnp.copy, rm)},
                               roles_lib.optimizers(roles))
  frozen = {"policy": policy}
  batch = _pairs_batch()

  state, metrics = step(state, batch, jax.random.key(1), frozen)
  # A zero head scores every sequence 0: the loss is log 2 and no pair is won.
  _close(metrics["loss"], math.log(2.0))
  _close(metrics["accuracy"], 0.0)
  for _ in range(4):
    state, metrics = step(state, batch, jax.random.key(1), frozen)
  assert set(state["roles"]) == {"reward_model"}  # nothing else has params to update
  trained = state["roles"]["reward_model"]["params"]
  gaps = np.asarray(_scores(trained, batch, "chosen") - _scores(trained, batch, "rejected"))
  assert np.all(gaps > 0), gaps
  assert float(metrics["loss"]) < math.log(2.0)
  chex.assert_trees_all_close(frozen["policy"], policy)  # read-only
  with pytest.raises(AssertionError):
    chex.assert_trees_all_close(trained["scalar_head"], rm["scalar_head"])


def test_rm_binding_rejects_a_role_without_a_scalar_head():
  roles = {"reward_model": roles_lib.RoleSpec(TINY, state_lib.make_optimizer(
      state_lib.OptimizerConfig()))}
  binding = update.Binding(objectives.get("bradley_terry"), reward_model.BradleyTerryConfig(),
                           roles, {"model": "reward_model"})
  with pytest.raises(ValueError, match="no 'scalar' head"):
    binding.check()


# ---------------------------------------------------------------- the config file


def test_grpo_reward_model_config_parses():
  from rlalign import config as config_lib
  c = load_config("grpo_reward_model", "/tmp/train.jsonl,/tmp/test.jsonl")
  c.data.data_dir = "/tmp/unused"
  cfg = config_lib.from_config_dict(c)
  phases, roles = cfg.phase_configs, cfg.role_configs
  assert cfg.recipe.settings.order == ("warm_start", "rm", "rl")
  assert phases["rm"].objective.name == "bradley_terry"
  assert phases["rm"].trained_roles == ("reward_model",)
  assert cfg.role_model("reward_model").heads == ("scalar",)
  assert roles["reward_model"].weights.role == "policy" and roles["reward_model"].trainable
  # The RL reward is the learned one only; the gold verifier stays the held-out judge.
  assert [t.name for t in phases["rl"].rewards] == ["reward_model"]
  assert phases["rl"].rewards[0].settings.role == "reward_model"
  assert [t.name for _, t in cfg.train.eval_judges] == ["exact_match"]


@pytest.mark.slow
def test_grpo_reward_model_config_end_to_end(tmp_path, cli):
  import json
  import sys

  from rlalign.data import addition
  train, test = addition.write_pairs(str(tmp_path / "pairs"), num_train=64, num_test=16)
  workdir = str(tmp_path / "run")
  cmd = [sys.executable, "-m", "rlalign.main",
         f"--config={os.path.join(REPO, 'configs', 'grpo_reward_model.py')}:{train},{test}",
         f"--workdir={workdir}", "--config.model.d_model=32", "--config.model.n_heads=2",
         "--config.model.d_ff=64", "--config.train.log_every=2", "--config.train.eval_every=2",
         "--config.train.checkpoint_every=2", "--config.train.eval_batch_size=16",
         "--config.phases.warm_start.steps=2", "--config.phases.warm_start.batch_size=8",
         "--config.phases.rm.steps=2", "--config.phases.rm.batch_size=8",
         "--config.phases.rl.steps=2", "--config.phases.rl.batch_size=16",
         "--config.phases.rl.group_size=4", "--config.phases.rl.minibatches=1"]
  cli.run(cmd, cli.env())
  records = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  # At the rm phase's start the reward model's scalar head is zero: every score is 0.
  start = [r for r in records if r["step"] == 2 and "eval/rm/accuracy" in r]
  assert len(start) == 1 and start[0]["eval/rm/loss"] == pytest.approx(math.log(2.0), abs=1e-5)
  assert start[0]["eval/rm/chosen_score"] == 0.0
  rl = [r for r in records if "reward" in r]
  assert rl and "reward/reward_model" in rl[-1]
  assert "accuracy" not in rl[-1]  # no exact-match term in the RL reward
  summary = json.load(open(os.path.join(workdir, "summary.json")))
  assert set(summary["after_rl"]) == {"eval/pass@1_greedy", "eval/pass@1_sampled"}
