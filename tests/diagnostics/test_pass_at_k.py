"""Tests for rlalign.diagnostics.pass_at_k against brute-force enumeration of k-subsets."""

import itertools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlalign.diagnostics import pass_at_k as pk


def _brute_force(row, k):
  """Fraction of the k-subsets of the row's samples that hold a correct one."""
  subsets = list(itertools.combinations(range(len(row)), k))
  return np.mean([any(row[i] for i in s) for s in subsets])


@pytest.mark.parametrize("num_samples", [1, 2, 5, 7])
def test_pass_at_k_matches_enumeration(num_samples):
  rng = np.random.default_rng(num_samples)
  correct = rng.random((6, num_samples)) < rng.random((6, 1))
  correct[0] = False  # none correct: pass@k is 0 for every k
  correct[1] = True  # all correct: 1
  for k in range(1, num_samples + 1):
    expected = np.array([_brute_force(row, k) for row in correct], np.float32)
    out = pk.pass_at_k(jnp.asarray(correct), k)
    chex.assert_shape(out, (6,))
    chex.assert_type(out, jnp.float32)
    chex.assert_trees_all_close(out, expected, atol=1e-6)


def test_pass_at_1_is_the_mean_and_floats_count_nonzero():
  correct = np.array([[1.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0]])
  out = pk.pass_at_k(jnp.asarray(correct, jnp.float32), 1)
  chex.assert_trees_all_close(out, np.array([0.5, 0.25, 0.0], np.float32), atol=1e-7)


def test_pass_at_k_is_stable_for_many_samples():
  # n = 200, one correct, k = 100: C(199, 100) / C(200, 100) = (200 - 100) / 200, so 0.5.
  # The binomials themselves are ~1e58 and 2e59.
  correct = np.zeros((2, 200), bool)
  correct[0, 17] = True
  # Row 1: 150 correct, so fewer than k = 100 wrong samples and every subset passes.
  correct[1, :150] = True
  out = pk.pass_at_k(jnp.asarray(correct), 100)
  chex.assert_trees_all_close(out, np.array([0.5, 1.0], np.float32), atol=1e-5)


def test_pass_at_k_jits_with_static_k():
  correct = jnp.array([[True, False, False, False], [False, True, True, False]])
  out = jax.jit(pk.pass_at_k, static_argnums=1)(correct, 2)
  # Row 0: 1 - C(3,2)/C(4,2) = 1 - 3/6. Row 1: 1 - C(2,2)/C(4,2) = 1 - 1/6.
  chex.assert_trees_all_close(out, np.array([0.5, 5 / 6], np.float32), atol=1e-6)


def test_pass_at_ks_means_over_prompts():
  correct = jnp.array([[True, False, False, False], [False, True, True, False]])
  out = pk.pass_at_ks(correct, [1, 2, 4])
  assert sorted(out) == ["pass@1", "pass@2", "pass@4"]
  chex.assert_trees_all_close(out["pass@1"], np.float32((0.25 + 0.5) / 2), atol=1e-7)
  chex.assert_trees_all_close(out["pass@2"], np.float32((0.5 + 5 / 6) / 2), atol=1e-6)
  chex.assert_trees_all_close(out["pass@4"], np.float32(1.0), atol=1e-7)


@pytest.mark.parametrize("k", [0, 5])
def test_k_outside_one_to_group_size_raises(k):
  with pytest.raises(ValueError, match=f"pass@{k}"):
    pk.pass_at_k(jnp.zeros((3, 4), bool), k)
