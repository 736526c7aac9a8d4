"""Tests for rlalign.diagnostics.agreement on synthetic models that lie on known probit lines."""

import itertools

import numpy as np
import pytest
from scipy import stats

from rlalign.diagnostics import agreement as agr

SLOPE, BIAS = 0.8, -0.3


def _on_line(p, slope=SLOPE, bias=BIAS):
  return stats.norm.cdf(slope * stats.norm.ppf(p) + bias)


def test_probit_values_and_clipping():
  np.testing.assert_allclose(agr.probit([0.5, 0.975, 0.025]), [0.0, 1.959963985, -1.959963985],
                             atol=1e-8)
  low, high = agr.probit([0.0, 1.0])
  assert low == pytest.approx(stats.norm.ppf(1e-6)) and high == pytest.approx(-low)
  assert agr.probit(0.0, eps=1e-3) == pytest.approx(stats.norm.ppf(1e-3))


def test_pairwise_agreement_by_hand():
  predictions = np.array([[0, 1, 2, 3], [0, 1, 0, 0], [1, 1, 2, 3]])
  agreement, pairs = agr.pairwise_agreement(predictions)
  assert pairs == [(0, 1), (0, 2), (1, 2)]
  # (0,1) agree at positions 0 and 1; (0,2) at 1, 2, 3; (1,2) at 1 only.
  np.testing.assert_allclose(agreement, [2 / 4, 3 / 4, 1 / 4])


def _exact_case(num_models=6, seed=0):
  rng = np.random.default_rng(seed)
  id_acc = rng.uniform(0.5, 0.95, num_models)
  pairs = list(itertools.combinations(range(num_models), 2))
  id_agr = rng.uniform(0.5, 0.95, len(pairs))
  return id_acc, _on_line(id_acc), pairs, id_agr, _on_line(id_agr)


def test_exact_line_is_recovered():
  id_acc, ood_acc, pairs, id_agr, ood_agr = _exact_case()
  slope, bias = agr.fit_agreement_line(id_agr, ood_agr)
  assert slope == pytest.approx(SLOPE, abs=1e-9) and bias == pytest.approx(BIAS, abs=1e-9)
  np.testing.assert_allclose(agr.aline_s(id_acc, slope, bias), ood_acc, atol=1e-6)
  np.testing.assert_allclose(agr.aline_d(id_acc, id_agr, ood_agr, pairs), ood_acc, atol=1e-6)


def test_aline_d_tracks_models_off_the_line():
  # Model i sits d_i off the accuracy line, x_i = a z_i + b + d_i, and each pair's OOD agreement
  # moves by (d_i + d_j) / 2. The pair equations then hold exactly for x. d is taken orthogonal
  # to what the line fit sees (sum over pairs of (d_i + d_j) and of (d_i + d_j) u_ij are 0), so
  # the fitted slope and bias stay exact while ALine-S, which ignores d, misses.
  id_acc, _, pairs, id_agr, _ = _exact_case(num_models=5, seed=3)
  u = stats.norm.ppf(id_agr)
  pair_sum = np.zeros((len(pairs), 5))
  for row, (i, j) in enumerate(pairs):
    pair_sum[row, [i, j]] = 0.5
  constraints = np.stack([np.ones(len(pairs)), u]) @ pair_sum  # [2, K]
  null_space = np.linalg.svd(constraints)[2][2:]  # [K - 2, K], orthogonal to both rows
  d = 0.3 * null_space.T @ np.random.default_rng(4).standard_normal(3)
  assert np.abs(d).max() > 0.1
  ood_acc = stats.norm.cdf(SLOPE * stats.norm.ppf(id_acc) + BIAS + d)
  ood_agr = stats.norm.cdf(SLOPE * u + BIAS + pair_sum @ d)
  slope, bias = agr.fit_agreement_line(id_agr, ood_agr)
  assert slope == pytest.approx(SLOPE, abs=1e-9) and bias == pytest.approx(BIAS, abs=1e-9)
  np.testing.assert_allclose(agr.aline_d(id_acc, id_agr, ood_agr, pairs), ood_acc, atol=1e-6)
  assert np.abs(agr.aline_s(id_acc, slope, bias) - ood_acc).max() > 0.02


def test_noisy_models_are_predicted_within_tolerance():
  rng = np.random.default_rng(7)
  id_acc, _, pairs, id_agr, _ = _exact_case(num_models=8, seed=5)
  sigma = 0.02  # probit-space noise; Phi' <= 0.4, so at most ~0.008 in accuracy per draw
  ood_acc = stats.norm.cdf(SLOPE * stats.norm.ppf(id_acc) + BIAS + sigma * rng.standard_normal(8))
  ood_agr = stats.norm.cdf(SLOPE * stats.norm.ppf(id_agr) + BIAS
                           + sigma * rng.standard_normal(len(pairs)))
  slope, bias = agr.fit_agreement_line(id_agr, ood_agr)
  # The same fit by an independent routine.
  np.testing.assert_allclose([slope, bias],
                             np.polyfit(stats.norm.ppf(id_agr), stats.norm.ppf(ood_agr), 1),
                             atol=1e-10)
  assert slope == pytest.approx(SLOPE, abs=0.1) and bias == pytest.approx(BIAS, abs=0.1)
  assert np.abs(agr.aline_s(id_acc, slope, bias) - ood_acc).max() < 0.03
  assert np.abs(agr.aline_d(id_acc, id_agr, ood_agr, pairs) - ood_acc).max() < 0.03


def test_aline_d_rejects_pairs_that_leave_accuracies_undetermined():
  # A 4-cycle of pairs: x + (1, -1, 1, -1) satisfies the same equations, rank 3 < 4.
  pairs = [(0, 1), (1, 2), (2, 3), (0, 3)]
  id_agr = np.array([0.6, 0.7, 0.8, 0.9])
  with pytest.raises(ValueError, match="do not determine"):
    agr.aline_d(np.full(4, 0.8), id_agr, _on_line(id_agr), pairs)
  with pytest.raises(ValueError, match="4 pairs"):
    agr.aline_d(np.full(4, 0.8), id_agr[:3], _on_line(id_agr[:3]), pairs)
