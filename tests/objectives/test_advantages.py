"""Tests for rlalign.objectives.advantages against hand-computed values."""

import chex
import jax.numpy as jnp
import numpy as np
import pytest

from rlalign.objectives import advantages as adv


def test_group_normalized_uses_population_std_and_eps():
  rewards = jnp.array([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0])
  out = adv.group_normalized(rewards, 4)
  # Group 1: mean 0.5, population std sqrt(mean((+-0.5)^2)) = 0.5 (sample std would be 0.577).
  # Group 2: all equal, std 0, so (r - mean) / (0 + eps) = 0.
  a = 0.5 / (0.5 + 1e-6)
  expected = np.array([a, -a, -a, a, 0.0, 0.0, 0.0, 0.0], np.float32)
  chex.assert_shape(out, (8,))
  chex.assert_type(out, jnp.float32)
  chex.assert_trees_all_close(out, expected, rtol=1e-6, atol=1e-7)


def test_group_normalized_eps_is_added_to_std():
  rewards = jnp.array([1.0, 0.0, 0.0, 1.0])
  # std 0.5, eps 0.5: 0.5 / (0.5 + 0.5) = 0.5.
  out = adv.group_normalized(rewards, 4, eps=0.5)
  chex.assert_trees_all_close(out, np.array([0.5, -0.5, -0.5, 0.5], np.float32), atol=1e-7)


def test_group_normalized_unequal_groups():
  # Pairs (3,1), (2,6), (0,4), (5,5): means 2, 4, 2, 5; population stds 1, 2, 2, 0.
  rewards = jnp.array([3, 1, 2, 6, 0, 4, 5, 5], jnp.int32)
  out = adv.group_normalized(rewards, 2)
  s1, s2, s3 = 1.0, 2.0, 2.0
  expected = np.array([1 / (s1 + 1e-6), -1 / (s1 + 1e-6), -2 / (s2 + 1e-6), 2 / (s2 + 1e-6),
                       -2 / (s3 + 1e-6), 2 / (s3 + 1e-6), 0.0, 0.0], np.float32)
  chex.assert_type(out, jnp.float32)
  chex.assert_trees_all_close(out, expected, rtol=1e-6)
  # One group [3, 1, 2, 6]: mean 3, deviations [0, -2, -1, 3], population var 14/4 = 3.5.
  out4 = adv.group_normalized(rewards[:4].astype(jnp.float32), 4)
  std = np.sqrt(3.5)
  chex.assert_trees_all_close(out4, np.array([0, -2, -1, 3], np.float32) / (std + 1e-6), rtol=1e-6)


def test_group_centered():
  rewards = jnp.array([1.0, 0.0, 0.0, 1.0, 3.0, 1.0, 2.0, 6.0])
  out = adv.group_centered(rewards, 4)
  expected = np.array([0.5, -0.5, -0.5, 0.5, 0.0, -2.0, -1.0, 3.0], np.float32)
  chex.assert_shape(out, (8,))
  chex.assert_trees_all_close(out, expected, atol=1e-7)


def test_leave_one_out():
  rewards = jnp.array([3.0, 1.0, 2.0, 6.0, 1.0, 0.0])
  # One group of 4: the others' means are (1+2+6)/3=3, (3+2+6)/3=11/3, (3+1+6)/3=10/3,
  # (3+1+2)/3=2.
  out = adv.leave_one_out(rewards[:4], 4)
  expected = np.array([3 - 3, 1 - 11 / 3, 2 - 10 / 3, 6 - 2], np.float32)
  chex.assert_trees_all_close(out, expected, rtol=1e-6, atol=1e-6)
  out2 = adv.leave_one_out(rewards, 2)
  # Pairs (3,1), (2,6), (1,0): r_i - r_other.
  chex.assert_trees_all_close(out2, np.array([2, -2, -4, 4, 1, -1], np.float32), atol=1e-6)


def test_zero_variance_fraction():
  rewards = jnp.array([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0])
  chex.assert_trees_all_close(adv.zero_variance_fraction(rewards, 4), np.float32(0.5))
  # Pairs (1,1), (0,0), (1,0): two of three are constant.
  pairs = jnp.array([1, 1, 0, 0, 1, 0], jnp.int32)
  chex.assert_trees_all_close(adv.zero_variance_fraction(pairs, 2), np.float32(2 / 3), rtol=1e-6)
  chex.assert_trees_all_close(adv.zero_variance_fraction(jnp.array([0.0, 1.0, 2.0, 3.0]), 2),
                              np.float32(0.0))


@pytest.mark.parametrize("fn", [adv.group_normalized, adv.group_centered, adv.leave_one_out,
                                adv.zero_variance_fraction])
def test_reward_count_not_divisible_by_group_size_raises(fn):
  with pytest.raises(ValueError) as e:
    fn(jnp.zeros((7,)), 4)
  assert "7" in str(e.value) and "4" in str(e.value)


def test_get_estimator_by_name():
  assert adv.get("group_norm").fn is adv.group_normalized
  assert adv.get("group_mean").fn is adv.group_centered
  assert adv.get("leave_one_out").fn is adv.leave_one_out
  with pytest.raises(KeyError, match="'nope'"):
    adv.get("nope")
