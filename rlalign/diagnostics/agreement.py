"""Agreement-on-the-line (Baek et al. 2022): out-of-distribution accuracy without OOD labels.

Across a family of models, probit(OOD accuracy) is close to linear in probit(ID accuracy), and
probit(OOD agreement) of model pairs lies on the same line as a function of probit(ID
agreement). Agreement needs no labels, so fitting the line on agreements and applying it to
ID accuracies predicts OOD accuracy: ALine-S does that directly, ALine-D through one equation
per pair. Host-side numpy, float64.
"""
from __future__ import annotations

import itertools
from typing import List, Sequence, Tuple

import numpy as np
from scipy import special

Pair = Tuple[int, int]


def probit(p, eps: float = 1e-6) -> np.ndarray:
  """Phi^-1(p), the standard normal quantile, with p clipped to [eps, 1 - eps] to stay finite."""
  return special.ndtri(np.clip(np.asarray(p, np.float64), eps, 1.0 - eps))


def pairwise_agreement(predictions) -> Tuple[np.ndarray, List[Pair]]:
  """Agreement of every model pair from class predictions [K, N].

  Returns ``(agreement, pairs)``: ``pairs`` lists (i, j), i < j, in
  ``itertools.combinations(range(K), 2)`` order, and ``agreement[p]`` is the fraction of the
  N inputs on which models i and j predict the same class.
  """
  predictions = np.asarray(predictions)
  pairs = list(itertools.combinations(range(predictions.shape[0]), 2))
  agreement = np.array([np.mean(predictions[i] == predictions[j]) for i, j in pairs], np.float64)
  return agreement, pairs


def fit_agreement_line(id_agreement, ood_agreement) -> Tuple[float, float]:
  """``(slope, bias)`` of the least-squares fit probit(ood) = slope * probit(id) + bias."""
  u, v = probit(id_agreement), probit(ood_agreement)
  if u.shape != v.shape or u.size < 2:
    raise ValueError(f"need matching agreements for at least 2 pairs, got {u.shape}, {v.shape}")
  design = np.stack([u, np.ones_like(u)], axis=1)
  (slope, bias), *_ = np.linalg.lstsq(design, v, rcond=None)
  return float(slope), float(bias)


def aline_s(id_acc, slope: float, bias: float) -> np.ndarray:
  """ALine-S: OOD accuracy [K] = Phi(slope * probit(id_acc) + bias), the agreement line
  applied to each model's ID accuracy."""
  return special.ndtr(slope * probit(id_acc) + bias)


def aline_d(id_acc, id_agreement, ood_agreement, pairs: Sequence[Pair]) -> np.ndarray:
  """ALine-D: OOD accuracies [K] from one linear equation per model pair.

  With z_i = probit(ID acc of i), x_i = probit(OOD acc of i), unknown, and for pair (i, j)
  u_ij = probit(ID agreement), v_ij = probit(OOD agreement), the two lines with a shared
  slope a and bias b are

    v_ij = a u_ij + b        (agreement on the line)
    x_i  = a z_i  + b        (accuracy on the line).

  Averaging the second over i and j, then taking b from the pair's own agreement,
  b = v_ij - a u_ij, leaves for every pair

    (x_i + x_j) / 2 = v_ij + a ((z_i + z_j) / 2 - u_ij),

  with a from ``fit_agreement_line``. This solves that system for x by least squares over
  the pairs and returns Phi(x). Unlike ALine-S, b is the pair's own, so a model off the line
  whose agreements move with it is tracked. The system has full rank K when the pairs link
  every model into a graph whose components each hold an odd cycle (all pairs of K >= 3
  models do); otherwise this raises.
  """
  z = probit(id_acc)
  u, v = probit(id_agreement), probit(ood_agreement)
  pairs = [tuple(map(int, p)) for p in pairs]
  if not len(pairs) == u.size == v.size:
    raise ValueError(f"{len(pairs)} pairs but {u.size} ID and {v.size} OOD agreements")
  slope, _ = fit_agreement_line(id_agreement, ood_agreement)
  system = np.zeros((len(pairs), z.size))
  rhs = np.empty(len(pairs))
  for row, (i, j) in enumerate(pairs):
    system[row, i] += 0.5
    system[row, j] += 0.5
    rhs[row] = v[row] + slope * ((z[i] + z[j]) / 2 - u[row])
  if np.linalg.matrix_rank(system) < z.size:
    raise ValueError(f"the {len(pairs)} pairs do not determine all {z.size} OOD accuracies")
  x, *_ = np.linalg.lstsq(system, rhs, rcond=None)
  return special.ndtr(x)
