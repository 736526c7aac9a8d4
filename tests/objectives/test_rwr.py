"""Reward-weighted regression: softmax weights over the batch, weighted mean NLL, by hand."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlalign import objectives
from rlalign.objectives import advantages as adv_lib
from rlalign.objectives import base, rwr


def _close(x, expected, tol=1e-6):
  chex.assert_trees_all_close(x, np.asarray(expected, np.float32), rtol=tol, atol=tol)


MASK = np.array([[True, True, False], [True, True, True], [True, False, False]])
LOGP = np.array([[-1.0, -2.0, -9.0], [-0.5, -0.1, -3.0], [-0.2, -9.0, -9.0]])
ROW_NLL = np.array([(1.0 + 2.0) / 2, (0.5 + 0.1 + 3.0) / 3, 0.2])
REWARDS = np.array([1.0, 0.0, 2.0])


def _inputs(rewards=REWARDS):
  outputs = {"policy": base.ModelOutputs(jnp.asarray(LOGP, jnp.float32))}
  batch = {"mask": jnp.asarray(MASK), "rewards": jnp.asarray(rewards, jnp.float32)}
  return outputs, batch


def _weights(rewards, tau):
  e = [math.exp(r / tau) for r in rewards]
  return np.array(e) / sum(e)


@pytest.mark.parametrize("tau", [1.0, 0.5, 10.0])
def test_rwr_loss_by_hand(tau):
  outputs, batch = _inputs()
  loss, metrics = rwr.rwr_loss(rwr.RWRConfig(tau=tau), outputs, batch)
  w = _weights(REWARDS, tau)
  chex.assert_shape(loss, ())
  _close(loss, np.sum(w * ROW_NLL), tol=1e-5)
  _close(metrics["nll"], (1.0 + 2.0 + 0.5 + 0.1 + 3.0 + 0.2) / 6, tol=1e-6)
  _close(metrics["weight_max"], w.max(), tol=1e-6)
  _close(metrics["effective_sample_fraction"], 1 / np.sum(w ** 2) / 3, tol=1e-5)


def test_rwr_weights_are_invariant_to_a_reward_shift_and_sharpen_with_small_tau():
  outputs, batch = _inputs()
  loss, _ = rwr.rwr_loss(rwr.RWRConfig(), outputs, batch)
  shifted, _ = rwr.rwr_loss(rwr.RWRConfig(), *_inputs(REWARDS + 100.0))
  _close(shifted, loss, tol=1e-5)  # and no overflow from exp(102)
  # tau -> 0: all the weight on the best row (row 2).
  sharp, metrics = rwr.rwr_loss(rwr.RWRConfig(tau=1e-3), outputs, batch)
  _close(sharp, ROW_NLL[2], tol=1e-5)
  _close(metrics["effective_sample_fraction"], 1 / 3, tol=1e-5)


def test_rwr_gradient_is_minus_weight_over_length():
  outputs, batch = _inputs()
  grad = jax.grad(lambda lp: rwr.rwr_loss(rwr.RWRConfig(tau=0.5),
                                          {"policy": base.ModelOutputs(lp)}, batch)[0])(
      outputs["policy"].logprobs)
  w = _weights(REWARDS, 0.5)
  _close(grad, np.where(MASK, (-w / MASK.sum(1))[:, None], 0.0), tol=1e-6)
  # The rewards get no gradient: the weights are constants.
  g_r = jax.grad(lambda r: rwr.rwr_loss(rwr.RWRConfig(), outputs, dict(batch, rewards=r))[0])(
      batch["rewards"])
  _close(g_r, np.zeros(3))


def test_rwr_rows_without_tokens_take_no_weight():
  """A row with an empty mask (a turn a RISE rollout skipped) is left out of the softmax:
  the loss is the two-row one by hand, whatever the empty row's reward."""
  mask = np.array(MASK)
  mask[2] = False
  outputs = {"policy": base.ModelOutputs(jnp.asarray(LOGP, jnp.float32))}
  for r in (2.0, -50.0, 50.0):
    loss, metrics = rwr.rwr_loss(rwr.RWRConfig(tau=0.4), outputs, {
        "mask": jnp.asarray(mask), "rewards": jnp.asarray([1.0, 0.0, r], jnp.float32)})
    w = _weights(REWARDS[:2], 0.4)
    _close(loss, np.sum(w * ROW_NLL[:2]), tol=1e-5)
    _close(metrics["effective_sample_fraction"], 1 / np.sum(w ** 2) / 2, tol=1e-5)
  nothing, _ = rwr.rwr_loss(rwr.RWRConfig(), outputs, {
      "mask": jnp.zeros_like(jnp.asarray(mask)), "rewards": jnp.asarray(REWARDS, jnp.float32)})
  _close(nothing, 0.0)


@pytest.mark.parametrize("tau", [0.0, -1.0, float("nan")])
def test_rwr_config_rejects_a_bad_tau(tau):
  with pytest.raises(ValueError, match=r"^objective\.tau "):
    rwr.RWRConfig(tau=tau).validate()
  rwr.RWRConfig(tau=0.1).validate()


def test_rwr_registered():
  objective = objectives.get("rwr")
  assert objective.loss_fn is rwr.rwr_loss and objective.hparams is rwr.RWRConfig
  assert objective.batch == "rollouts" and dict(objective.trains) == {"policy": ("logprobs",)}
  assert not objective.needs_reference(rwr.RWRConfig())
  assert objective.advantage in adv_lib.ESTIMATORS
