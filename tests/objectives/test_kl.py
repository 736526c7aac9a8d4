"""Tests for rlalign.objectives.kl estimators."""

import math

import chex
import jax.numpy as jnp
import numpy as np
import pytest

from rlalign.objectives import kl


def test_estimators_on_hand_values():
  logp = jnp.array([math.log(0.5), math.log(0.25)])
  ref = jnp.array([math.log(0.25), math.log(0.5)])
  # pi/ref = 2 then 1/2.
  chex.assert_trees_all_close(kl.k1(logp, ref), np.array([math.log(2), -math.log(2)], np.float32),
                              rtol=1e-6)
  chex.assert_trees_all_close(kl.k2(logp, ref),
                              np.array([0.5 * math.log(2) ** 2] * 2, np.float32), rtol=1e-6)
  # k3 = ref/pi - log(ref/pi) - 1: ref/pi = 0.5 then 2.
  chex.assert_trees_all_close(
      kl.k3(logp, ref),
      np.array([0.5 - math.log(0.5) - 1, 2 - math.log(2) - 1], np.float32), rtol=1e-6)


@pytest.mark.parametrize("name", ["k1", "k2", "k3"])
def test_estimate_dispatches_by_name(name):
  logp = jnp.array([math.log(0.5)])
  ref = jnp.array([math.log(0.25)])
  expected = {"k1": math.log(2), "k2": 0.5 * math.log(2) ** 2, "k3": 0.5 - math.log(0.5) - 1}
  chex.assert_trees_all_close(kl.estimate(name, logp, ref),
                              np.array([expected[name]], np.float32), rtol=1e-6)


def test_k3_nonnegative_on_grid_and_zero_when_equal():
  grid = np.linspace(-6.0, 0.0, 61, dtype=np.float32)
  logp, ref = np.meshgrid(grid, grid)
  out = np.asarray(kl.k3(jnp.asarray(logp), jnp.asarray(ref)))
  assert out.shape == (61, 61)
  assert np.all(out >= 0.0)
  assert np.all(np.diag(out) == 0.0)
  # Strictly positive away from the diagonal (|log ratio| >= 0.1 on this grid).
  off = ~np.eye(61, dtype=bool)
  assert np.all(out[off] > 1e-3)
  assert np.all(np.asarray(kl.k2(jnp.asarray(logp), jnp.asarray(ref))) >= 0.0)


def test_k1_and_k3_are_unbiased_for_kl():
  # Exact expectations under pi of the per-sample estimators equal KL(pi || ref).
  pi = np.array([0.5, 0.2, 0.2, 0.1])
  ref = np.array([0.25, 0.25, 0.4, 0.1])
  true_kl = sum(p * math.log(p / q) for p, q in zip(pi, ref))
  logp, logr = jnp.log(jnp.asarray(pi, jnp.float32)), jnp.log(jnp.asarray(ref, jnp.float32))
  for fn in (kl.k1, kl.k3):
    expectation = float(np.sum(pi * np.asarray(fn(logp, logr))))
    assert abs(expectation - true_kl) < 1e-6, fn.__name__


def test_unknown_estimator_raises_naming_it():
  with pytest.raises(ValueError) as e:
    kl.estimate("k7", jnp.zeros(2), jnp.zeros(2))
  assert "'k7'" in str(e.value)
  assert "k3" in str(e.value)
