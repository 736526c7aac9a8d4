"""Rejection-sampling fine-tuning: NLL over the kept rows' tokens, by hand."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlalign import objectives
from rlalign.objectives import advantages as adv_lib
from rlalign.objectives import base, rft


def _close(x, expected, tol=1e-6):
  chex.assert_trees_all_close(x, np.asarray(expected, np.float32), rtol=tol, atol=tol)


MASK = np.array([[True, True, False], [True, True, True], [True, True, True],
                 [True, False, False]])
LOGP = np.array([[-1.0, -2.0, -9.0], [-0.5, -0.1, -3.0], [-0.2, -0.4, -0.6],
                 [-1.5, -9.0, -9.0]])


def _inputs(rewards):
  outputs = {"policy": base.ModelOutputs(jnp.asarray(LOGP, jnp.float32))}
  batch = {"mask": jnp.asarray(MASK), "rewards": jnp.asarray(rewards, jnp.float32),
           "advantages": jnp.full((4,), 50.0), "old_logprobs": jnp.zeros((4, 3))}
  return outputs, batch


def test_rft_is_the_token_mean_nll_of_the_kept_rows():
  outputs, batch = _inputs([1.0, 0.0, 1.5, 0.99])  # rows 0 and 2 reach the threshold 1
  loss, metrics = rft.rft_loss(rft.RFTConfig(), outputs, batch)
  expected = (1.0 + 2.0 + 0.2 + 0.4 + 0.6) / 5
  chex.assert_shape(loss, ())
  _close(loss, expected, tol=1e-6)
  _close(metrics["nll"], expected, tol=1e-6)
  _close(metrics["kept_fraction"], 0.5)
  # A lower threshold keeps row 3 too.
  loss, metrics = rft.rft_loss(rft.RFTConfig(threshold=0.5), outputs, batch)
  _close(loss, (1.0 + 2.0 + 0.2 + 0.4 + 0.6 + 1.5) / 6, tol=1e-6)
  _close(metrics["kept_fraction"], 0.75)


def test_rft_gradient_only_reaches_kept_real_tokens():
  outputs, batch = _inputs([1.0, 0.0, 1.5, 0.99])
  grad = jax.grad(lambda lp: rft.rft_loss(rft.RFTConfig(), {"policy": base.ModelOutputs(lp)},
                                          batch)[0])(outputs["policy"].logprobs)
  expected = np.zeros((4, 3))
  expected[0, :2] = expected[2, :] = -1 / 5
  _close(grad, expected)


def test_rft_keeps_nothing_gives_zero_loss_and_gradient():
  outputs, batch = _inputs([0.0, 0.0, -1.0, 0.5])
  loss_of = lambda lp: rft.rft_loss(rft.RFTConfig(), {"policy": base.ModelOutputs(lp)},
                                    batch)
  (loss, metrics), grad = jax.value_and_grad(loss_of, has_aux=True)(outputs["policy"].logprobs)
  _close(loss, 0.0)
  _close(metrics["kept_fraction"], 0.0)
  _close(grad, np.zeros((4, 3)))


@pytest.mark.parametrize("value", [float("nan"), "high"])
def test_rft_config_rejects_a_threshold_that_is_not_a_number(value):
  with pytest.raises(ValueError, match=r"^rl\.objective\.threshold "):
    rft.RFTConfig(threshold=value).validate("rl.objective")
  rft.RFTConfig(threshold=-0.5).validate()
  rft.RFTConfig(threshold=float("-inf")).validate()  # keep everything


def test_rft_registered():
  objective = objectives.get("rft")
  assert objective.loss_fn is rft.rft_loss and objective.hparams is rft.RFTConfig
  assert objective.batch == "rollouts" and dict(objective.trains) == {"policy": ("logprobs",)}
  assert not objective.needs_reference(rft.RFTConfig())
  assert objective.advantage in adv_lib.ESTIMATORS
