"""Tests for rlalign.diagnostics.uncertainty against hand and plain-Python computations."""

import collections
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlalign.diagnostics import uncertainty as unc

# Jitted, as callers use them: one compile per shape instead of one per primitive.
decompose = jax.jit(unc.decompose, static_argnums=2)
answer_class_ids = jax.jit(unc.answer_class_ids)


def _entropy(probs):
  return -sum(p * math.log(p) for p in probs if p > 0)


def _reference(class_ids, valid, num_classes):
  """Loops over prompts and members; members with no valid answer are left out."""
  out = []
  for ids_p, valid_p in zip(class_ids, valid):
    dists = []
    for ids_m, valid_m in zip(ids_p, valid_p):
      counts = collections.Counter(int(i) for i, v in zip(ids_m, valid_m) if v)
      total = sum(counts.values())
      if total:
        dists.append([counts[c] / total for c in range(num_classes)])
    if not dists:
      out.append((0.0, 0.0))
      continue
    mean = [sum(d[c] for d in dists) / len(dists) for c in range(num_classes)]
    out.append((_entropy(mean), sum(_entropy(d) for d in dists) / len(dists)))
  return np.array(out)


def test_decompose_matches_loops_on_random_cases():
  rng = np.random.default_rng(0)
  class_ids = rng.integers(0, 4, (5, 3, 6))
  valid = rng.random((5, 3, 6)) > 0.3
  valid[0, 1] = False  # a member with no valid answer drops out of prompt 0's means
  valid[4] = False  # a prompt with none at all
  expected = _reference(class_ids, valid, 4)
  out = decompose(jnp.asarray(class_ids), jnp.asarray(valid), 4)
  for field in out:
    chex.assert_shape(field, (5,))
  chex.assert_trees_all_close(out.total, expected[:, 0].astype(np.float32), atol=1e-6)
  chex.assert_trees_all_close(out.aleatoric, expected[:, 1].astype(np.float32), atol=1e-6)
  chex.assert_trees_all_close(out.epistemic, (expected[:, 0] - expected[:, 1]).astype(np.float32),
                              atol=1e-6)
  chex.assert_trees_all_close(out.aleatoric + out.epistemic, out.total, atol=1e-7)
  assert np.all(np.asarray(out.epistemic) > -1e-6)


def test_identical_members_have_no_epistemic_uncertainty():
  # Every member answers [0, 0, 1, 1]: each p_m = (1/2, 1/2), so total = aleatoric = log 2.
  class_ids = jnp.tile(jnp.array([0, 0, 1, 1]), (1, 3, 1))
  out = decompose(class_ids, jnp.ones((1, 3, 4), bool), 3)
  chex.assert_trees_all_close(out.total, np.float32([math.log(2)]), atol=1e-6)
  chex.assert_trees_all_close(out.aleatoric, np.float32([math.log(2)]), atol=1e-6)
  chex.assert_trees_all_close(out.epistemic, np.float32([0.0]), atol=1e-6)


def test_deterministic_disagreeing_members_are_all_epistemic():
  # Member m always answers m: each H(p_m) = 0, the mixture is uniform over M = 4 classes.
  class_ids = jnp.broadcast_to(jnp.arange(4)[None, :, None], (2, 4, 5))
  out = decompose(class_ids, jnp.ones((2, 4, 5), bool), 6)
  chex.assert_trees_all_close(out.aleatoric, np.float32([0.0, 0.0]), atol=1e-7)
  chex.assert_trees_all_close(out.epistemic, np.float32([math.log(4)] * 2), atol=1e-6)


def test_decompose_by_hand_and_out_of_range_ids_are_invalid():
  # Member 0 answers [0, 0]: p = (1, 0). Member 1 answers [0, 1] (and a 7, outside C = 2,
  # which is dropped): p = (1/2, 1/2). Mixture (3/4, 1/4).
  class_ids = jnp.array([[[0, 0, 0], [0, 1, 7]]])
  valid = jnp.array([[[True, True, False], [True, True, True]]])
  out = decompose(class_ids, valid, 2)
  total = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
  aleatoric = (0.0 + math.log(2)) / 2
  chex.assert_trees_all_close(out.total, np.float32([total]), atol=1e-6)
  chex.assert_trees_all_close(out.aleatoric, np.float32([aleatoric]), atol=1e-6)
  chex.assert_trees_all_close(out.epistemic, np.float32([total - aleatoric]), atol=1e-6)
  probs = unc.answer_distributions(class_ids, valid, 2)
  chex.assert_trees_all_close(probs, np.float32([[[1.0, 0.0], [0.5, 0.5]]]))


def _first_match_ids(tokens, mask):
  """Per prompt, each sample's index of the first sample with the same masked sequence."""
  num_prompts, members, samples, _ = tokens.shape
  flat_t = tokens.reshape(num_prompts, members * samples, -1)
  flat_m = mask.reshape(flat_t.shape)
  out = np.zeros((num_prompts, members * samples), np.int32)
  for p in range(num_prompts):
    seqs = [tuple(t[m]) for t, m in zip(flat_t[p], flat_m[p])]
    out[p] = [seqs.index(s) for s in seqs]
  return out.reshape(num_prompts, members, samples)


def test_answer_class_ids_match_python():
  rng = np.random.default_rng(1)
  # Two token values and short rows, so many completions coincide, some only after packing.
  tokens = rng.integers(0, 2, (3, 2, 5, 4))
  mask = rng.random((3, 2, 5, 4)) > 0.4
  out = answer_class_ids(jnp.asarray(tokens), jnp.asarray(mask))
  chex.assert_shape(out, (3, 2, 5))
  chex.assert_type(out, jnp.int32)
  np.testing.assert_array_equal(np.asarray(out), _first_match_ids(tokens, mask))


def test_answer_class_ids_by_hand():
  # Samples (M = 1, G = 4): [3, 4] padded at the end, [3, 4] with padding between, [3] (a
  # prefix of the first, so different), and [3, 4, 5].
  tokens = jnp.array([[[[3, 4, 9], [3, 9, 4], [3, 4, 9], [3, 4, 5]]]])
  mask = jnp.array([[[[1, 1, 0], [1, 0, 1], [1, 0, 0], [1, 1, 1]]]], bool)
  np.testing.assert_array_equal(np.asarray(answer_class_ids(tokens, mask)), [[[0, 0, 2, 3]]])


def test_uncertainty_penalty_broadcasts_epistemic_per_prompt():
  # Prompt 0: members always answer 0 and 1: epistemic log 2. Prompt 1: both answer
  # [0, 1]: epistemic 0. Prompt 0's last sample is invalid, so its penalty is 0.
  class_ids = jnp.array([[[0, 0], [1, 1]], [[0, 1], [0, 1]]])
  valid = jnp.array([[[True, True], [True, False]], [[True, True], [True, True]]])
  out = jax.jit(unc.uncertainty_penalty, static_argnums=2)(class_ids, valid, 2, 0.5)
  chex.assert_shape(out, (8,))
  p = -0.5 * math.log(2)
  chex.assert_trees_all_close(out, np.float32([p, p, p, 0, 0, 0, 0, 0]), atol=1e-6)


@pytest.mark.parametrize("num_members", [2, 3])
def test_class_ids_feed_decompose(num_members):
  # Each member repeats its own distinct completion: ids 0, G, 2G, ...; epistemic log M.
  samples = 3
  tokens = jnp.broadcast_to(jnp.arange(num_members)[None, :, None, None],
                            (1, num_members, samples, 2))
  mask = jnp.ones(tokens.shape, bool)
  ids = answer_class_ids(tokens, mask)
  out = decompose(ids, mask[..., 0], num_members * samples)
  chex.assert_trees_all_close(out.epistemic, np.float32([math.log(num_members)]), atol=1e-6)
