"""REINFORCE++: prepare's per-token rewards, returns-to-go and whitening against numpy loops,
and the clipped token loss by hand."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlalign import objectives
from rlalign.objectives import advantages as adv_lib
from rlalign.objectives import base, reinforce_pp


def _close(x, expected, tol=1e-6):
  chex.assert_trees_all_close(x, np.asarray(expected, np.float32), rtol=tol, atol=tol)


LENGTHS = np.array([4, 2, 0, 3, 1])  # a full row, short ones, an empty one


def _batch(seed=0):
  rng = np.random.default_rng(seed)
  B, T = len(LENGTHS), 4
  mask = np.arange(T)[None, :] < LENGTHS[:, None]
  old = -rng.uniform(0.1, 3.0, size=(B, T))
  ref = old + rng.normal(scale=0.3, size=(B, T))
  return {"mask": jnp.asarray(mask),
          "rewards": jnp.asarray([1.0, 0.0, 5.0, -1.0, 2.0], jnp.float32),
          "advantages": jnp.full((B,), 123.0),  # the phase estimator's, to be overwritten
          "old_logprobs": jnp.asarray(old, jnp.float32),
          "ref_logprobs": jnp.asarray(ref, jnp.float32)}


def _advantages_by_hand(batch, beta, gamma):
  mask = np.asarray(batch["mask"])
  old, ref = np.asarray(batch["old_logprobs"]), np.asarray(batch["ref_logprobs"])
  rewards = np.asarray(batch["rewards"])
  B, T = mask.shape
  returns = np.zeros((B, T))
  for b in range(B):
    n = int(mask[b].sum())
    r = [-beta * (old[b, t] - ref[b, t]) + (rewards[b] if t == n - 1 else 0.0)
         for t in range(n)]
    for t in range(n):
      returns[b, t] = sum(gamma ** (k - t) * r[k] for k in range(t, n))
  real = returns[mask]
  adv = np.where(mask, (returns - real.mean()) / real.std(), 0.0)
  return adv, returns


def _no_score(slot, fields):
  raise AssertionError(f"REINFORCE++ has no critic to score ({slot}, {fields})")


@pytest.mark.parametrize("beta,gamma", [(0.0, 1.0), (0.1, 1.0), (0.05, 0.9), (0.2, 0.0)])
def test_prepare_matches_numpy_loops(beta, gamma):
  batch = _batch()
  hp = reinforce_pp.ReinforcePPConfig(kl_in_reward=beta, gamma=gamma)
  out, metrics = jax.jit(lambda b: reinforce_pp.reinforce_pp_prepare(hp, b, _no_score, 5))(
      batch)
  adv, returns = _advantages_by_hand(batch, beta, gamma)
  chex.assert_shape(out["advantages"], (5, 4))
  _close(out["returns"], returns, tol=1e-5)
  _close(out["advantages"], adv, tol=1e-4)
  mask = np.asarray(batch["mask"])
  _close(metrics["return_mean"], returns[mask].mean(), tol=1e-5)
  # Whitened over the batch's real tokens: mean 0, std 1 there, 0 on padding.
  a = np.asarray(out["advantages"])
  np.testing.assert_allclose([a[mask].mean(), a[mask].std()], [0.0, 1.0], atol=1e-4)
  assert np.all(a[~mask] == 0)
  for key in ("mask", "rewards", "old_logprobs", "ref_logprobs"):
    np.testing.assert_array_equal(out[key], batch[key])


def test_prepare_returns_by_hand_without_kl():
  # Rewards 1, 0, 5, -1, 2 at the last real tokens; gamma 1 gives each token its row's reward.
  out, _ = reinforce_pp.reinforce_pp_prepare(reinforce_pp.ReinforcePPConfig(), _batch(),
                                             _no_score, 5)
  _close(out["returns"], [[1, 1, 1, 1], [0, 0, 0, 0], [0, 0, 0, 0], [-1, -1, -1, 0],
                          [2, 0, 0, 0]])
  # gamma 0.5 on the full row: 1/8, 1/4, 1/2, 1.
  out, _ = reinforce_pp.reinforce_pp_prepare(reinforce_pp.ReinforcePPConfig(gamma=0.5),
                                             _batch(), _no_score, 5)
  _close(out["returns"][0], [0.125, 0.25, 0.5, 1.0])


def test_loss_is_the_clipped_token_surrogate_by_hand():
  mask = np.array([[True, True, False], [True, True, True]])
  old = np.array([[-1.0, -2.0, -0.5], [-1.5, -0.7, -3.0]])
  ratios = np.array([[1.1, 1.5, 2.0], [0.9, 0.5, 1.3]])
  advs = np.array([[1.0, 0.5, 7.0], [-2.0, -1.0, 1.0]])
  logp = jnp.asarray(old + np.log(ratios), jnp.float32)
  entropy = jnp.asarray([[0.5, 1.0, 9.0], [1.5, 0.2, 0.3]])
  outputs = {"policy": base.ModelOutputs(logp, entropy)}
  batch = {"mask": jnp.asarray(mask), "old_logprobs": jnp.asarray(old, jnp.float32),
           "ref_logprobs": logp, "advantages": jnp.asarray(advs, jnp.float32)}
  loss, metrics = reinforce_pp.reinforce_pp_loss(reinforce_pp.ReinforcePPConfig(), outputs,
                                                 batch)
  per_token = [-1.1 * 1.0,       # inside [0.8, 1.2]
               -1.2 * 0.5,       # A > 0, r = 1.5: clipped
               -0.9 * -2.0,      # inside
               -0.8 * -1.0,      # A < 0, r = 0.5: clipped
               -1.2 * 1.0]       # A > 0, r = 1.3: clipped
  _close(loss, np.mean(per_token), tol=1e-5)
  _close(metrics["clip_frac"], 3 / 5)
  _close(metrics["kl"], 0.0)  # ref = pi here
  _close(metrics["entropy"], (0.5 + 1.0 + 1.5 + 0.2 + 0.3) / 5)
  # The bonus and the KL term are added per token, as GRPO's.
  hp = reinforce_pp.ReinforcePPConfig(entropy_coef=0.1, kl_coef=1.0)
  loss2, _ = reinforce_pp.reinforce_pp_loss(hp, outputs, batch)
  _close(loss2, np.mean(per_token) - 0.1 * 3.5 / 5, tol=1e-5)
  grad = jax.grad(lambda lp: reinforce_pp.reinforce_pp_loss(
      reinforce_pp.ReinforcePPConfig(), {"policy": base.ModelOutputs(lp, entropy)}, batch)[0])(
          logp)
  _close(grad, [[-1.1 * 1.0 / 5, 0, 0], [-0.9 * -2.0 / 5, 0, 0]], tol=1e-6)


@pytest.mark.parametrize("field,value", [
    ("gamma", 1.5), ("gamma", -0.1), ("gamma", float("nan")), ("clip_eps", 0.0),
    ("clip_eps", float("nan")), ("kl_in_reward", -0.1), ("kl_in_reward", float("nan")),
    ("kl_coef", -1.0), ("entropy_coef", float("nan")), ("kl_estimator", "k9"),
    ("aggregation", "mean"),
])
def test_config_validate_names_the_field(field, value):
  with pytest.raises(ValueError, match=rf"^rl\.objective\.{field} "):
    reinforce_pp.ReinforcePPConfig(**{field: value}).validate("rl.objective")
  reinforce_pp.ReinforcePPConfig(kl_in_reward=0.01, gamma=0.99,
                                 aggregation="constant").validate()


def test_registered_with_prepare_and_a_reference_for_the_kl_reward():
  objective = objectives.get("reinforce_pp")
  assert objective.loss_fn is reinforce_pp.reinforce_pp_loss
  assert objective.prepare is reinforce_pp.reinforce_pp_prepare
  assert objective.hparams is reinforce_pp.ReinforcePPConfig
  assert dict(objective.trains) == {"policy": ("logprobs", "entropy")}
  assert objective.advantage in adv_lib.ESTIMATORS  # overwritten by prepare anyway
  assert not objective.needs_reference(reinforce_pp.ReinforcePPConfig())
  assert objective.needs_reference(reinforce_pp.ReinforcePPConfig(kl_in_reward=0.01))
  assert objective.needs_reference(reinforce_pp.ReinforcePPConfig(kl_coef=0.01))
