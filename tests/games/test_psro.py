"""PSRO with exact best-response oracles on matrix games whose equilibria are known: the
meta-game fills each payoff once, and the meta-strategy's exploitability in the full game
falls to zero."""
import numpy as np
import pytest

from rlalign.games import psro, zero_sum

RPS = np.array([[0.0, -1.0, 1.0], [1.0, 0.0, -1.0], [-1.0, 1.0, 0.0]])


def oracles(game):
  """Policies are the full game's pure strategies; the oracles are its exact best replies."""
  red = lambda blues, mix: int(np.argmax(game[:, blues] @ mix))
  blue = lambda reds, mix: int(np.argmin(mix @ game[reds, :]))
  gap = lambda reds, x, blues, y: float(np.max(game[:, blues] @ y) - np.min(x @ game[reds, :]))
  return red, blue, gap


def test_rock_paper_scissors_reaches_the_uniform_equilibrium():
  red, blue, gap = oracles(RPS)
  calls = []
  payoff = lambda r, b: calls.append((r, b)) or RPS[r, b]
  result = psro.psro(0, 0, payoff, red, blue, iterations=3, exploitability=gap)
  # Rock against rock; then paper against paper; then scissors against scissors.
  assert result.reds[:3] == [0, 1, 2] and result.blues[:3] == [0, 1, 2]
  assert [r.exploitability for r in result.iterations][:3] == pytest.approx([2.0, 2.0, 0.0])
  final = result.iterations[-1]
  assert final.exploitability == pytest.approx(0.0, abs=1e-7)
  assert final.value == pytest.approx(0.0, abs=1e-7)
  # Each entry of the final 4 x 4 meta-game is simulated once.
  assert len(calls) == result.payoffs.size == 16
  np.testing.assert_array_equal(result.payoffs, RPS[np.ix_(result.reds, result.blues)])


@pytest.mark.parametrize("seed", [0, 1])
def test_on_a_random_game_exploitability_falls_to_zero_and_the_value_is_the_games(seed):
  game = np.random.default_rng(seed).normal(size=(25, 25))
  red, blue, gap = oracles(game)
  seen = []
  result = psro.psro(0, 0, lambda r, b: game[r, b], red, blue, iterations=40,
                     exploitability=gap, on_iteration=lambda k, rec: seen.append(k))
  gaps = [r.exploitability for r in result.iterations]
  assert seen == list(range(41))
  assert gaps[0] > 0.5 and gaps[-1] == pytest.approx(0.0, abs=1e-6)
  assert result.iterations[-1].value == pytest.approx(zero_sum.nash(game).value, abs=1e-6)


def test_bad_input():
  red, blue, _ = oracles(RPS)
  with pytest.raises(ValueError, match="iterations must be >= 1"):
    psro.psro(0, 0, lambda r, b: RPS[r, b], red, blue, iterations=0)
  with pytest.raises(ValueError, match="the meta-game's payoffs\\[1, 0\\] is nan"):
    psro.psro(0, 0, lambda r, b: np.nan if r == 1 else RPS[r, b], red, blue, iterations=1)
