"""Two-player zero-sum matrix games: the meta-game of PSRO, where a population of red-team
policies meets a population of blue-team ones and a simulation fills the payoffs.

  nash(payoff)             both players' Nash mixtures and the game's value, each from its
                           own linear program (``scipy.optimize.linprog``, HiGHS)
  exploitability(...)      what best responses gain against a pair of mixtures (NashConv):
                           0 exactly at an equilibrium, PSRO's measure of convergence
  fictitious_play(...)     the empirical mixtures of repeated best responses: a second route
                           to the equilibrium, without a solver (error falls like 1/sqrt(T))
  plot_payoffs(...)        the payoff matrix as a PNG heat map, beside both mixtures

``payoff[i, j]`` is what the row player (red) gets when its policy i meets the column
player's (blue) policy j; blue gets ``-payoff[i, j]``. Red maximises, blue minimises. These
are host-side numpy functions: a meta-game has one row per policy, not per token.
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Sequence

import numpy as np

# Mixtures are probability vectors up to the LP solver's feasibility tolerance.
_SIMPLEX_TOLERANCE = 1e-6


class Equilibrium(NamedTuple):
  row: np.ndarray   # [m] the row player's Nash mixture
  col: np.ndarray   # [n] the column player's
  value: float      # what the row player gets at it, the game's value


def check_payoff(payoff, name: str = "payoff") -> np.ndarray:
  """``payoff`` as a finite float64 [m, n] matrix, or a one-line error naming it."""
  a = np.asarray(payoff, dtype=np.float64)
  if a.ndim != 2 or 0 in a.shape:
    raise ValueError(f"{name} must be a non-empty [rows, cols] matrix, got shape {a.shape}")
  if not np.all(np.isfinite(a)):
    bad = tuple(int(i) for i in np.argwhere(~np.isfinite(a))[0])
    raise ValueError(f"{name}{list(bad)} is {a[bad]}: every payoff must be finite")
  return a


def check_mixture(mixture, size: int, name: str) -> np.ndarray:
  """``mixture`` as a probability vector over ``size`` policies, or a one-line error."""
  p = np.asarray(mixture, dtype=np.float64)
  if p.shape != (size,):
    raise ValueError(f"{name} must have one weight per policy ({size}), got shape {p.shape}")
  if not np.all(np.isfinite(p)) or np.any(p < -_SIMPLEX_TOLERANCE) or \
      abs(p.sum() - 1.0) > _SIMPLEX_TOLERANCE:
    raise ValueError(f"{name} must be non-negative and sum to 1, got {p.tolist()}")
  return p


def _maximin(a: np.ndarray) -> np.ndarray:
  """The row player's maximin mixture of ``a``: max v s.t. (x^T a)_j >= v, x in the simplex."""
  from scipy.optimize import linprog  # only the meta-game solver needs scipy
  m, n = a.shape
  # Variables (x_1..x_m, v); minimise -v.
  cost = np.zeros(m + 1)
  cost[-1] = -1.0
  a_ub = np.hstack([-a.T, np.ones((n, 1))])        # v - (x^T a)_j <= 0 for every column j
  a_eq = np.hstack([np.ones((1, m)), np.zeros((1, 1))])
  result = linprog(cost, A_ub=a_ub, b_ub=np.zeros(n), A_eq=a_eq, b_eq=[1.0],
                   bounds=[(0.0, None)] * m + [(None, None)], method="highs")
  if not result.success:
    raise RuntimeError(f"the meta-game's linear program failed: {result.message}")
  x = np.clip(result.x[:m], 0.0, None)
  return x / x.sum()


def nash(payoff) -> Equilibrium:
  """A Nash equilibrium of the zero-sum game ``payoff`` [m, n]: the row player's maximin
  mixture, the column player's minimax one (the row problem of ``-payoff.T``), and the value
  the row mixture guarantees. Where the equilibrium is not unique, one of them."""
  a = check_payoff(payoff)
  row = _maximin(a)
  col = _maximin(-a.T)
  return Equilibrium(row, col, float(np.min(row @ a)))


def exploitability(payoff, row, col) -> float:
  """NashConv of the mixtures: what the row player's best response gains over ``row``
  against ``col``, plus the column player's over ``col`` against ``row``; that is
  max_i (payoff @ col)_i - min_j (row @ payoff)_j. Non-negative, and 0 exactly at an
  equilibrium."""
  a = check_payoff(payoff)
  x = check_mixture(row, a.shape[0], "row")
  y = check_mixture(col, a.shape[1], "col")
  return float(np.max(a @ y) - np.min(x @ a))


def fictitious_play(payoff, iterations: int, row0: int = 0, col0: int = 0) -> Equilibrium:
  """Simultaneous fictitious play from pure policies ``row0`` and ``col0``: each iteration
  both players best-respond to the other's empirical mixture so far (ties: the lowest
  index). Returns the empirical mixtures and the row player's guaranteed value under its."""
  a = check_payoff(payoff)
  if iterations < 1:
    raise ValueError(f"iterations must be >= 1, got {iterations}")
  m, n = a.shape
  rows, cols = np.zeros(m), np.zeros(n)
  rows[row0] += 1
  cols[col0] += 1
  for _ in range(iterations - 1):
    i = int(np.argmax(a @ (cols / cols.sum())))
    j = int(np.argmin((rows / rows.sum()) @ a))
    rows[i] += 1
    cols[j] += 1
  x, y = rows / rows.sum(), cols / cols.sum()
  return Equilibrium(x, y, float(np.min(x @ a)))


def plot_payoffs(payoff, path: str, *, row: Optional[Sequence[float]] = None,
                 col: Optional[Sequence[float]] = None,
                 row_names: Optional[Sequence[str]] = None,
                 col_names: Optional[Sequence[str]] = None,
                 title: str = "payoff to the row player") -> None:
  """The payoff matrix as a heat map, each cell labelled, with each player's mixture (say,
  the Nash meta-strategy) as bars beside it; written atomically as a PNG."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  from rlalign import metrics as metrics_lib
  a = check_payoff(payoff)
  m, n = a.shape
  row_names = list(row_names or [f"red {i}" for i in range(m)])
  col_names = list(col_names or [f"blue {j}" for j in range(n)])
  if len(row_names) != m or len(col_names) != n:
    raise ValueError(f"row_names and col_names must name {m} and {n} policies, got "
                     f"{len(row_names)} and {len(col_names)}")
  fig = Figure(figsize=(2.0 + 0.7 * n + 1.5, 1.5 + 0.5 * m + 1.2), layout="constrained")
  FigureCanvasAgg(fig)
  grid = fig.add_gridspec(2, 2, width_ratios=(max(n, 1), 1.2), height_ratios=(1.2, max(m, 1)))
  ax = fig.add_subplot(grid[1, 0])
  bound = float(np.max(np.abs(a))) or 1.0
  image = ax.imshow(a, cmap="RdBu_r", vmin=-bound, vmax=bound, aspect="auto")
  for i in range(m):
    for j in range(n):
      ax.text(j, i, f"{a[i, j]:.2f}", ha="center", va="center", fontsize=8)
  ax.set_xticks(range(n), col_names, rotation=45, ha="right", fontsize=8)
  ax.set_yticks(range(m), row_names, fontsize=8)
  fig.colorbar(image, ax=ax, shrink=0.8)
  if col is not None:
    top = fig.add_subplot(grid[0, 0], sharex=ax)
    top.bar(range(n), check_mixture(col, n, "col"), color="tab:blue")
    top.set_ylim(0, 1)
    top.set_ylabel("blue mix", fontsize=8)
    top.tick_params(labelbottom=False)
  if row is not None:
    side = fig.add_subplot(grid[1, 1], sharey=ax)
    side.barh(range(m), check_mixture(row, m, "row"), color="tab:red")
    side.set_xlim(0, 1)
    side.set_xlabel("red mix", fontsize=8)
    side.tick_params(labelleft=False)
  fig.suptitle(title, fontsize=10)
  metrics_lib.save_png(fig, path, dpi=110)
