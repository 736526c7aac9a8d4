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


# ---------------------------------------------------------------- K heads, bootstrapped


def _bootstrap_batch(pairs=5, seed=0):
  rng = np.random.default_rng(seed)
  prompt = rng.integers(3, 8, size=(pairs, 3))
  chosen, rejected = rng.integers(3, 8, size=(pairs, 4)), rng.integers(3, 8, size=(pairs, 4))
  return {"prompt_tokens": jnp.asarray(np.concatenate([prompt, prompt]), jnp.int32),
          "prompt_mask": jnp.ones((2 * pairs, 3), bool),
          "completion_tokens": jnp.asarray(np.concatenate([chosen, rejected]), jnp.int32),
          "mask": jnp.ones((2 * pairs, 4), bool)}


def test_k_heads_loss_is_the_mean_of_each_heads_loss_by_hand():
  scores = np.array([[1.0, 0.0], [-0.5, 2.0], [0.0, 1.0], [0.5, -1.0]])  # 2 pairs, 2 heads
  loss, metrics = _call(reward_model.BradleyTerryConfig(), scores)
  gaps = scores[:2] - scores[2:]
  _close(loss, np.mean([-_log_sigmoid(g) for g in gaps.ravel()]))
  _close(metrics["accuracy"], 0.5)  # gaps [[1, -1], [-1, 3]]
  _close(metrics["head_disagreement"], np.mean(np.std(scores, axis=1)))


def test_bootstrap_weights_are_fixed_by_the_pair_not_its_place_or_padding():
  batch = _bootstrap_batch(pairs=6)
  w = np.asarray(reward_model.bootstrap_weights(batch, 4, seed=0))
  chex.assert_shape(w, (6, 4))
  assert np.all(w >= 0) and np.all(w == np.round(w))
  # Another minibatch order: pairs 5,0,3 then their rejected rows.
  order = np.array([5, 0, 3])
  rows = np.concatenate([order, order + 6])
  moved = {k: v[rows] for k, v in batch.items()}
  np.testing.assert_array_equal(reward_model.bootstrap_weights(moved, 4, seed=0), w[order])
  # Left padding the prompts changes no weight.
  padded = dict(batch, prompt_tokens=jnp.pad(batch["prompt_tokens"], ((0, 0), (2, 0))),
                prompt_mask=jnp.pad(batch["prompt_mask"], ((0, 0), (2, 0))))
  np.testing.assert_array_equal(reward_model.bootstrap_weights(padded, 4, seed=0), w)
  # Another seed is another resample, and the heads' resamples differ from each other.
  assert not np.array_equal(reward_model.bootstrap_weights(batch, 4, seed=1), w)
  assert len({tuple(col) for col in w.T}) > 1


def test_bootstrap_weights_have_poisson_one_statistics():
  w = np.asarray(reward_model.bootstrap_weights(_bootstrap_batch(pairs=2000, seed=1), 8, 0))
  assert abs(w.mean() - 1.0) < 0.03 and abs(w.var() - 1.0) < 0.06
  assert abs((w == 0).mean() - math.exp(-1)) < 0.02


def test_bootstrap_loss_is_each_heads_weighted_mean_by_hand():
  batch = _bootstrap_batch(pairs=5)
  hp = reward_model.BradleyTerryConfig(bootstrap=True, bootstrap_seed=7)
  scores = np.random.default_rng(2).normal(size=(10, 3))
  loss, _ = _call(hp, scores, batch)
  w = np.asarray(reward_model.bootstrap_weights(batch, 3, seed=7))
  nll = np.array([[-_log_sigmoid(g) for g in row] for row in scores[:5] - scores[5:]])
  per_head = (w * nll).sum(0) / np.maximum(w.sum(0), 1.0)
  _close(loss, per_head.mean())


K_HEADS = tfm.ModelConfig(**{**SCALAR.__dict__, "scalar_heads": 3})


def test_k_head_params_outputs_and_axes():
  params = tfm.init(K_HEADS, jax.random.key(0))
  chex.assert_shape(params["scalar_head"]["w"], (16, 3))
  axes = tfm.logical_axes(K_HEADS)["scalar_head"]
  assert axes["w"] == ("embed", "scalar_heads") and axes["b"] == ("scalar_heads",)
  hidden = jax.random.normal(jax.random.key(1), (2, 5, 16))
  out = tfm.scalar_output(params, hidden)
  chex.assert_shape(out, (2, 5, 3))
  for k in range(3):  # each head is the one-head formula with its own column
    one = {"scalar_head": {"w": params["scalar_head"]["w"][:, k],
                           "b": params["scalar_head"]["b"][k]}}
    _close(out[..., k], tfm.scalar_output(one, hidden))
  with pytest.raises(ValueError, match="model.scalar_heads must be >= 1"):
    tfm.ModelConfig(scalar_heads=0).validate("model")


def test_k_heads_serve_scores_but_not_values():
  update.check_heads("rm", K_HEADS, ("scores",), "reward 'rm'")
  with pytest.raises(ValueError, match=r"needs \['values'\] from role 'critic'.*scalar_heads=3"):
    update.check_heads("critic", K_HEADS, ("values",), "objective 'ppo'")


def test_bootstrapped_heads_learn_different_functions():
  """Three heads from one start on the same pairs: with bootstrap they part ways, without it
  they stay within rounding of their start's differences."""
  batch = _bootstrap_batch(pairs=8, seed=3)
  start = tfm.init(K_HEADS, jax.random.key(0))
  start["scalar_head"]["w"] = jnp.tile(start["scalar_head"]["w"][:, :1], (1, 3))  # identical

  def train(bootstrap):
    hp = reward_model.BradleyTerryConfig(bootstrap=bootstrap)
    def loss(params):
      tokens = jnp.concatenate([batch["prompt_tokens"], batch["completion_tokens"]], 1)
      mask = jnp.concatenate([batch["prompt_mask"], batch["mask"]], 1)
      out = {"model": base.ModelOutputs(scores=tfm.sequence_scores(params, tokens, mask,
                                                                   K_HEADS))}
      return reward_model.bradley_terry_loss(hp, out, batch)[0]
    params, grad = start, jax.jit(jax.grad(loss))
    for _ in range(20):
      grads = grad(params)
      params = jax.tree.map(lambda p, g: p - 0.1 * g, params, grads)
    return np.asarray(params["scalar_head"]["w"])
  plain, bagged = train(False), train(True)
  assert np.abs(plain - plain[:, :1]).max() < 1e-6  # same data, same gradients
  assert np.abs(bagged - bagged[:, :1]).max() > 1e-3


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
