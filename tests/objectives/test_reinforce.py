"""RLOO and ReMax: the REINFORCE sequence loss, its on- and off-policy gradients, by hand."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlalign import objectives
from rlalign.objectives import advantages as adv_lib
from rlalign.objectives import base, reinforce


def _close(x, expected, tol=1e-6):
  chex.assert_trees_all_close(x, np.asarray(expected, np.float32), rtol=tol, atol=tol)


MASK = np.array([[True, True, False], [True, True, True], [True, False, False],
                 [True, True, True]])
LOGP = np.array([[-1.0, -2.0, -9.0], [-0.5, -0.1, -3.0], [-0.2, -9.0, -9.0],
                 [-1.2, -0.3, -0.6]])
ADVS = np.array([1.0, -2.0, 0.5, 0.25])
ENTROPY = np.array([[0.5, 1.0, 9.0], [1.5, 0.2, 0.3], [0.7, 9.0, 9.0], [0.1, 0.2, 0.4]])


def _inputs(old=LOGP, advs=ADVS):
  logp = jnp.asarray(LOGP, jnp.float32)
  batch = {"mask": jnp.asarray(MASK), "old_logprobs": jnp.asarray(old, jnp.float32),
           "ref_logprobs": jnp.asarray(old, jnp.float32),
           "advantages": jnp.asarray(advs, jnp.float32)}
  return {"policy": base.ModelOutputs(logp, jnp.asarray(ENTROPY, jnp.float32))}, batch


def test_on_policy_value_is_minus_advantage_times_sequence_logprob():
  policy, batch = _inputs()
  loss, metrics = reinforce.reinforce_loss(reinforce.ReinforceConfig(), policy, batch)
  seq_logp = [-1.0 - 2.0, -0.5 - 0.1 - 3.0, -0.2, -1.2 - 0.3 - 0.6]
  expected = -np.mean(ADVS * np.array(seq_logp))
  chex.assert_shape(loss, ())
  _close(loss, expected, tol=1e-6)
  _close(metrics["pg_loss"], expected, tol=1e-6)
  _close(metrics["ratio_mean"], 1.0)
  _close(metrics["entropy"], ENTROPY[MASK].mean())


def test_on_policy_gradient_is_minus_advantage_times_grad_log_pi():
  """A tiny tabular policy: logits theta [B, T, V], one softmax per position."""
  rng = np.random.default_rng(0)
  B, T, V = MASK.shape + (5,)
  theta = jnp.asarray(rng.normal(size=(B, T, V)), jnp.float32)
  tokens = rng.integers(0, V, size=(B, T))

  def logprobs(th):
    return jnp.take_along_axis(jax.nn.log_softmax(th), jnp.asarray(tokens)[..., None],
                               axis=-1)[..., 0]

  old = jax.lax.stop_gradient(logprobs(theta))
  batch = {"mask": jnp.asarray(MASK), "old_logprobs": old, "ref_logprobs": old,
           "advantages": jnp.asarray(ADVS, jnp.float32)}

  def loss_of(th):
    outputs = {"policy": base.ModelOutputs(logprobs(th), jnp.zeros((B, T)))}
    return reinforce.reinforce_loss(reinforce.ReinforceConfig(), outputs, batch)[0]

  grad = jax.grad(loss_of)(theta)
  # grad_theta log pi(y_it) = onehot(y_it) - softmax(theta_it); by hand in numpy.
  th = np.asarray(theta, np.float64)
  probs = np.exp(th - th.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  grad_log_pi = np.eye(V)[tokens] - probs
  expected = -(ADVS[:, None, None] * grad_log_pi * MASK[..., None]) / B
  _close(grad, expected, tol=1e-6)


def test_off_policy_gradient_is_importance_weighted_per_token():
  old = LOGP - np.array([[0.2, -0.1, 3.0], [0.0, 0.3, -0.2], [-0.4, 5.0, 5.0],
                         [0.1, 0.1, 0.1]])
  rho = np.exp(LOGP - old)
  policy, batch = _inputs(old=old)
  loss, metrics = reinforce.reinforce_loss(reinforce.ReinforceConfig(), policy, batch)
  # Value: -1/B sum_i A_i sum_t rho_it log pi_it (rho a constant).
  _close(loss, -np.mean(ADVS * np.sum(np.where(MASK, rho * LOGP, 0), 1)), tol=1e-5)
  _close(metrics["ratio_mean"], rho[MASK].mean(), tol=1e-5)
  grad = jax.grad(lambda lp: reinforce.reinforce_loss(
      reinforce.ReinforceConfig(), {"policy": policy["policy"]._replace(logprobs=lp)},
      batch)[0])(policy["policy"].logprobs)
  # The same gradient as -1/B sum_i A_i sum_t rho_it, the unclipped token-level IS surrogate.
  _close(grad, np.where(MASK, -ADVS[:, None] * rho / 4, 0.0), tol=1e-5)


def test_per_token_advantages_weigh_each_token():
  policy, batch = _inputs()
  advs = np.array([[1.0, 2.0, 9.0], [0.5, 0.5, -1.0], [3.0, 9.0, 9.0], [0.0, 1.0, 2.0]])
  loss, _ = reinforce.reinforce_loss(reinforce.ReinforceConfig(), policy,
                                     dict(batch, advantages=jnp.asarray(advs, jnp.float32)))
  _close(loss, -np.sum(np.where(MASK, advs * LOGP, 0)) / 4, tol=1e-5)


def test_kl_coef_adds_the_summed_sequence_kl():
  policy, batch = _inputs()
  ref_over_pi = np.array([[2.0, 0.5, 7.0], [1.0, 4.0, 0.25], [3.0, 7.0, 7.0],
                          [1.5, 1.0, 0.8]])
  batch = dict(batch, ref_logprobs=jnp.asarray(LOGP + np.log(ref_over_pi), jnp.float32))
  k3 = ref_over_pi - np.log(ref_over_pi) - 1
  loss, metrics = reinforce.reinforce_loss(reinforce.ReinforceConfig(kl_coef=0.1), policy,
                                           batch)
  loss0, _ = reinforce.reinforce_loss(reinforce.ReinforceConfig(), policy, batch)
  _close(loss, loss0 + 0.1 * np.sum(np.where(MASK, k3, 0)) / 4, tol=1e-5)
  _close(metrics["kl"], k3[MASK].mean(), tol=1e-5)
  # kl_coef = 0 ignores the reference.
  far = dict(batch, ref_logprobs=batch["ref_logprobs"] + 5.0)
  _close(reinforce.reinforce_loss(reinforce.ReinforceConfig(), policy, far)[0], loss0)


def test_rloo_with_its_leave_one_out_baseline_by_hand():
  rewards = np.array([1.0, 0.0, 0.0, 1.0])  # one prompt, G = 4
  loo = np.array([1 - 1 / 3, 0 - 2 / 3, 0 - 2 / 3, 1 - 1 / 3])
  advs = adv_lib.get(objectives.get("rloo").advantage).fn(jnp.asarray(rewards), 4)
  _close(advs, loo, tol=1e-6)
  policy, batch = _inputs(advs=np.asarray(advs))
  loss, _ = reinforce.reinforce_loss(reinforce.ReinforceConfig(), policy, batch)
  _close(loss, -np.mean(loo * np.sum(np.where(MASK, LOGP, 0), 1)), tol=1e-5)


@pytest.mark.parametrize("field,value", [("kl_coef", -0.1), ("kl_coef", float("nan")),
                                         ("kl_estimator", "k4")])
def test_config_validate_names_the_field(field, value):
  with pytest.raises(ValueError, match=rf"^objective\.{field} "):
    reinforce.ReinforceConfig(**{field: value}).validate()
  reinforce.ReinforceConfig(kl_coef=0.05, kl_estimator="k1").validate()


def test_rloo_and_remax_registered_with_one_loss():
  rloo, remax = objectives.get("rloo"), objectives.get("remax")
  for objective in (rloo, remax):
    assert objective.loss_fn is reinforce.reinforce_loss
    assert objective.hparams is reinforce.ReinforceConfig
    assert objective.batch == "rollouts" and objective.prepare is None
    assert not objective.needs_reference(reinforce.ReinforceConfig())
    assert objective.needs_reference(reinforce.ReinforceConfig(kl_coef=0.01))
  assert rloo.advantage == "leave_one_out"
  assert remax.advantage == "greedy_baseline"  # the reward minus the greedy completion's
