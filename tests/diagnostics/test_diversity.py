"""Tests for rlalign.diagnostics.diversity: distinct-n against Python sets, self-BLEU by hand."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlalign.diagnostics import diversity as div

# Jitted, as callers use it: one compile per shape instead of one per primitive.
distinct_n = jax.jit(div.distinct_n, static_argnames=("n", "groups"))


def _distinct_reference(tokens, mask, n, groups):
  """Plain Python: per group, |set of valid n-grams| / number of valid n-grams, averaged."""
  rows = len(tokens) // groups
  ratios = []
  for g in range(groups):
    grams = []
    for b in range(g * rows, (g + 1) * rows):
      for t in range(tokens.shape[1] - n + 1):
        if mask[b, t:t + n].all():
          grams.append(tuple(tokens[b, t:t + n]))
    if grams:
      ratios.append(len(set(grams)) / len(grams))
  return np.mean(ratios) if ratios else 0.0


@pytest.mark.parametrize("n,groups,vocab", [(1, 1, 3), (2, 2, 3), (3, 4, 2), (4, 2, 2),
                                            (2, 4, 1 << 20)])
def test_distinct_n_matches_python_sets(n, groups, vocab):
  rng = np.random.default_rng(n * 10 + groups)
  for _ in range(3):
    tokens = rng.integers(0, vocab, (8, 9))
    # Right padding of random lengths, plus a few holes, plus one fully masked row.
    mask = np.arange(9)[None, :] < rng.integers(0, 10, (8, 1))
    mask &= rng.random((8, 9)) > 0.1
    mask[3] = False
    expected = _distinct_reference(tokens, mask, n, groups)
    out = distinct_n(jnp.asarray(tokens, jnp.int32), jnp.asarray(mask), n=n, groups=groups)
    chex.assert_shape(out, ())
    chex.assert_trees_all_close(out, np.float32(expected), atol=1e-6)


def test_distinct_n_by_hand():
  # Row 0: bigrams (1,2), (2,1), (1,2): 2 distinct of 3. Row 1 is masked after its 2nd token,
  # leaving one bigram (5,5). One group: {(1,2), (2,1), (5,5)} of 4 bigrams, so 3/4.
  tokens = jnp.array([[1, 2, 1, 2], [5, 5, 1, 2]])
  mask = jnp.array([[1, 1, 1, 1], [1, 1, 0, 0]], bool)
  chex.assert_trees_all_close(distinct_n(tokens, mask, n=2), np.float32(0.75))
  # Two groups of one row each: 2/3 and 1/1, mean 5/6.
  chex.assert_trees_all_close(distinct_n(tokens, mask, n=2, groups=2), np.float32(5 / 6),
                              atol=1e-6)
  # A group with no n-gram drops out of the mean instead of counting as 0.
  chex.assert_trees_all_close(distinct_n(tokens, mask, n=3, groups=2), np.float32(1.0))


def test_distinct_n_without_ngrams_is_zero():
  tokens = jnp.ones((4, 3), jnp.int32)
  assert float(distinct_n(tokens, jnp.zeros((4, 3), bool), n=2, groups=2)) == 0.0
  assert float(distinct_n(tokens, jnp.ones((4, 3), bool), n=4)) == 0.0


def test_distinct_n_rows_must_split_into_groups():
  with pytest.raises(ValueError, match="3 groups"):
    div.distinct_n(jnp.ones((4, 3), jnp.int32), jnp.ones((4, 3), bool), 1, groups=3)


A, B, C = [1, 2, 3, 4], [1, 2, 3, 5], [6, 2, 3]


def test_self_bleu_by_hand_bigrams():
  # max_n = 2, so BLEU = BP * sqrt(p1 * p2) with p2 = (matches + 1) / (bigrams + 1).
  # A vs {B, C}: unigrams 1, 2, 3 found, 4 not: p1 = 3/4. Bigrams (1,2), (2,3) found, (3,4)
  #   not: p2 = (2+1)/(3+1) = 3/4. Length 4, reference lengths 4 and 3: r = 4, BP = 1. 3/4.
  # B vs {A, C}: the same with 5 for 4: 3/4.
  # C vs {A, B}: unigram 6 missing: p1 = 2/3. Bigram (2,3) found, (6,2) not: p2 = 2/3.
  #   Length 3 < r = 4: BP = exp(1 - 4/3). BLEU = 2/3 * exp(-1/3).
  expected = (0.75 + 0.75 + 2 / 3 * math.exp(-1 / 3)) / 3
  assert div.self_bleu([A, B, C], max_n=2) == pytest.approx(expected, rel=1e-12)


def test_self_bleu_by_hand_four_grams():
  # A vs {B, C}: p1 = 3/4, p2 = 3/4; trigrams (1,2,3) found, (2,3,4) not: p3 = (1+1)/(2+1);
  #   4-gram (1,2,3,4) not found: p4 = (0+1)/(1+1). BLEU = (3/4 * 3/4 * 2/3 * 1/2)^(1/4).
  # B: the same. C vs {A, B}: p1 = p2 = 2/3; trigram (6,2,3) not found: p3 = 1/2; C has no
  #   4-gram: p4 = (0+1)/(0+1) = 1. BLEU = exp(-1/3) * (2/3 * 2/3 * 1/2 * 1)^(1/4).
  bleu_a = (3 / 16) ** 0.25
  bleu_c = math.exp(-1 / 3) * (2 / 9) ** 0.25
  assert div.self_bleu([A, B, C]) == pytest.approx((2 * bleu_a + bleu_c) / 3, rel=1e-12)


def test_self_bleu_clips_counts_and_breaks_length_ties_short():
  # [7,7,7] vs [7,8,9]: its three 7s are clipped to the reference's one: p1 = 1/3, and
  # [7,8,9] vs [7,7,7]: only 7 matches: 1/3. Equal lengths, BP = 1.
  assert div.self_bleu([[7, 7, 7], [7, 8, 9]], max_n=1) == pytest.approx(1 / 3)
  # Clipping is to the largest count in one reference, not the sum over them: [7,7] vs two
  # [7]s matches once, 1/2 (BP 1, it is longer); each [7] vs {[7,7], [7]} scores 1.
  assert div.self_bleu([[7, 7], [7], [7]], max_n=1) == pytest.approx(5 / 6)
  # [1,2,3] vs lengths 2 and 4: tie, the shorter (2) wins, BP = 1, p1 = 1: BLEU 1.
  # [1,2] vs lengths 3 and 4: r = 3, BP = exp(1 - 3/2), p1 = 1.
  # [1,2,3,4] vs lengths 3 and 2: r = 3, BP = 1, p1 = 3/4.
  expected = (1.0 + math.exp(-0.5) + 0.75) / 3
  assert div.self_bleu([[1, 2, 3], [1, 2], [1, 2, 3, 4]], max_n=1) == pytest.approx(expected)


def test_self_bleu_extremes():
  assert div.self_bleu([[4, 5, 6, 7, 8]] * 3) == pytest.approx(1.0)
  assert div.self_bleu([[1, 2, 3], [4, 5, 6], [7, 8]]) == 0.0
  with pytest.raises(ValueError):
    div.self_bleu([[1, 2, 3]])


def test_self_bleu_groups_reads_masked_tokens_per_group():
  # Group 0: [7,7,7] and [7,8,9] at max_n = 1, 1/3 as above. Group 1: [4, _, 5] and [4, 5, _]
  # are both [4, 5] once the mask is applied: identical, so 1. Mean 2/3.
  tokens = np.array([[7, 7, 7], [7, 8, 9], [4, 0, 5], [4, 5, 0]])
  mask = np.array([[1, 1, 1], [1, 1, 1], [1, 0, 1], [1, 1, 0]], bool)
  assert div.self_bleu_groups(tokens, mask, 2, max_n=1) == pytest.approx(2 / 3)
  with pytest.raises(ValueError):
    div.self_bleu_groups(tokens, mask, 3)


@pytest.mark.parametrize("seed, vocab", [(0, 3), (1, 6), (2, 40)])
def test_in_graph_self_bleu_matches_the_host_reference(seed, vocab):
  """Random groups of prefix-masked rows (some empty, some repeated), against the host's
  Counter-based self-BLEU."""
  rng = np.random.default_rng(seed)
  groups, G, T = 5, 4, 9
  tokens = rng.integers(0, vocab, size=(groups * G, T)).astype(np.int32)
  lengths = rng.integers(0, T + 1, size=groups * G)
  lengths[1] = 0  # an empty hypothesis scores 0
  tokens[5] = tokens[4]
  lengths[5] = lengths[4]  # a duplicate row
  mask = np.arange(T)[None, :] < lengths[:, None]
  ours = float(jax.jit(lambda t, m: div.self_bleu_in_graph(t, m, groups))(tokens, mask))
  expected = div.self_bleu_groups(tokens, mask, G)
  assert ours == pytest.approx(expected, abs=1e-5)
  assert 0.0 < expected < 1.0
