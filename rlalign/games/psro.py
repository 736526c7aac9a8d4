"""Policy-Space Response Oracles (Lanctot et al. 2017) for two-player zero-sum games, with the
oracles left to the caller: a red-team/blue-team recipe passes RL phases that train a new
policy against the other side's meta-strategy, a test passes exact best responses.

Each iteration:

  1. the meta-game: the payoff matrix over both populations, each new entry filled once by
     ``payoff(red, blue)`` (a simulation: attacks sampled, replies judged);
  2. the meta-strategy: its Nash mixtures (``zero_sum.nash``);
  3. both oracles: a new red policy against blue's mixture and a new blue policy against
     red's, each added to its population.

``exploitability(reds, red_mix, blues, blue_mix)``, when the caller can measure it (in the
full game, or against a strong fixed best response), is logged per iteration: PSRO's
convergence, which must fall.
"""
from __future__ import annotations

from typing import Any, Callable, List, NamedTuple, Optional, Sequence

import numpy as np

from rlalign.games import zero_sum


class Iteration(NamedTuple):
  red_mix: np.ndarray          # [reds] the meta-strategy over the red population
  blue_mix: np.ndarray         # [blues]
  value: float                 # the meta-game's value to red
  exploitability: Optional[float]


class PSROResult(NamedTuple):
  reds: List[Any]
  blues: List[Any]
  payoffs: np.ndarray          # [reds, blues] the final meta-game, payoff to red
  iterations: List[Iteration]


def psro(red: Any, blue: Any, payoff: Callable[[Any, Any], float],
         red_oracle: Callable[[Sequence[Any], np.ndarray], Any],
         blue_oracle: Callable[[Sequence[Any], np.ndarray], Any], iterations: int, *,
         exploitability: Optional[Callable[[Sequence[Any], np.ndarray, Sequence[Any],
                                            np.ndarray], float]] = None,
         on_iteration: Optional[Callable[[int, Iteration], None]] = None) -> PSROResult:
  """``iterations`` of PSRO from one policy per side. ``red_oracle(blues, blue_mix)``
  returns red's new policy against that mixture, ``blue_oracle(reds, red_mix)`` blue's;
  ``on_iteration(k, record)`` sees each meta-strategy as it is solved (a progress bar, a
  checkpoint). The last record is the meta-strategy of the final populations."""
  if iterations < 1:
    raise ValueError(f"iterations must be >= 1, got {iterations}")
  reds, blues = [red], [blue]
  table = np.full((1, 1), float(payoff(red, blue)))
  records: List[Iteration] = []
  for k in range(iterations + 1):
    eq = zero_sum.nash(table)
    gap = None if exploitability is None else float(
        exploitability(reds, eq.row, blues, eq.col))
    record = Iteration(eq.row, eq.col, eq.value, gap)
    records.append(record)
    if on_iteration is not None:
      on_iteration(k, record)
    if k == iterations:
      break
    # Both oracles answer the same meta-strategy, as in the paper's simultaneous version.
    new_red, new_blue = red_oracle(list(blues), eq.col), blue_oracle(list(reds), eq.row)
    reds.append(new_red)
    blues.append(new_blue)
    grown = np.empty((len(reds), len(blues)))
    grown[:-1, :-1] = table
    grown[-1, :] = [payoff(new_red, b) for b in blues]
    grown[:-1, -1] = [payoff(r, new_blue) for r in reds[:-1]]
    table = zero_sum.check_payoff(grown, "the meta-game's payoffs")
  return PSROResult(reds, blues, table, records)
