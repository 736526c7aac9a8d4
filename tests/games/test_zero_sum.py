"""Zero-sum meta-games: Nash mixtures against closed forms and the minimax theorem,
exploitability by hand, fictitious play against the linear program, bad input, the PNG."""
import numpy as np
import pytest

from rlalign.games import zero_sum

RPS = np.array([[0.0, -1.0, 1.0],   # rock against rock, paper, scissors
                [1.0, 0.0, -1.0],   # paper
                [-1.0, 1.0, 0.0]])  # scissors


def test_rock_paper_scissors_and_matching_pennies_are_uniform_with_value_zero():
  for game in (RPS, np.array([[1.0, -1.0], [-1.0, 1.0]])):
    eq = zero_sum.nash(game)
    n = game.shape[0]
    np.testing.assert_allclose(eq.row, np.full(n, 1 / n), atol=1e-7)
    np.testing.assert_allclose(eq.col, np.full(n, 1 / n), atol=1e-7)
    assert eq.value == pytest.approx(0.0, abs=1e-9)


def test_a_two_by_two_game_without_a_saddle_point_matches_its_closed_form():
  a, b, c, d = 3.0, -1.0, -2.0, 4.0  # no pure equilibrium: the best replies cycle
  eq = zero_sum.nash([[a, b], [c, d]])
  denominator = a - b - c + d
  np.testing.assert_allclose(eq.row, [(d - c) / denominator, (a - b) / denominator], atol=1e-7)
  np.testing.assert_allclose(eq.col, [(d - b) / denominator, (a - c) / denominator], atol=1e-7)
  assert eq.value == pytest.approx((a * d - b * c) / denominator, abs=1e-9)


def test_a_saddle_point_is_a_pure_equilibrium():
  game = np.array([[4.0, 2.0, 5.0],
                   [3.0, 1.0, 0.0],
                   [6.0, 3.0, 7.0]])  # row 2 dominates; column 1 is its lowest: value 3
  eq = zero_sum.nash(game)
  np.testing.assert_allclose(eq.row, [0, 0, 1], atol=1e-7)
  np.testing.assert_allclose(eq.col, [0, 1, 0], atol=1e-7)
  assert eq.value == pytest.approx(3.0)


@pytest.mark.parametrize("seed, shape", [(0, (6, 5)), (1, (3, 8)), (2, (7, 7))])
def test_a_random_games_mixtures_meet_the_minimax_theorem(seed, shape):
  game = np.random.default_rng(seed).normal(size=shape)
  eq = zero_sum.nash(game)
  # Each mixture guarantees the value against every pure reply of the other side, and the
  # two guarantees meet: max_x min_j = min_y max_i.
  assert np.min(eq.row @ game) == pytest.approx(eq.value, abs=1e-7)
  assert np.max(game @ eq.col) == pytest.approx(eq.value, abs=1e-7)
  assert zero_sum.exploitability(game, eq.row, eq.col) == pytest.approx(0.0, abs=1e-7)
  # No pure policy of the row player does better against the column mixture.
  assert np.all(game @ eq.col <= eq.value + 1e-7)


def test_exploitability_by_hand():
  rock, paper = [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]
  # Rock against rock: paper would win 1 for red, and paper would win 1 for blue.
  assert zero_sum.exploitability(RPS, rock, rock) == pytest.approx(2.0)
  # Paper against rock: red already best-responds (1); blue's best reply, scissors, takes
  # red's paper to -1: NashConv 1 - (-1).
  assert zero_sum.exploitability(RPS, paper, rock) == pytest.approx(2.0)
  uniform = [1 / 3] * 3
  assert zero_sum.exploitability(RPS, uniform, uniform) == pytest.approx(0.0, abs=1e-12)
  # Half rock, half paper against uniform: red's best reply gets 0, as red does; blue's best
  # reply to (1/2, 1/2, 0) is paper, against which red gets (-1 + 0) / 2.
  assert zero_sum.exploitability(RPS, [0.5, 0.5, 0.0], uniform) == pytest.approx(0.5)


def test_fictitious_play_approaches_the_linear_programs_equilibrium():
  game = np.random.default_rng(3).normal(size=(5, 4))
  exact = zero_sum.nash(game)
  gaps = []
  for iterations in (10, 100, 3000):
    played = zero_sum.fictitious_play(game, iterations)
    gaps.append(zero_sum.exploitability(game, played.row, played.col))
  assert gaps[-1] < 0.05 and gaps[-1] < gaps[0]
  assert played.value == pytest.approx(exact.value, abs=0.05)


@pytest.mark.parametrize("call, message", [
    (lambda: zero_sum.nash([1.0, 2.0]), "payoff must be a non-empty \\[rows, cols\\] matrix"),
    (lambda: zero_sum.nash(np.zeros((0, 3))), "non-empty"),
    (lambda: zero_sum.nash([[0.0, np.nan]]), "payoff\\[0, 1\\] is nan"),
    (lambda: zero_sum.exploitability(RPS, [0.5, 0.5], [1 / 3] * 3), "row must have one weight "
     "per policy \\(3\\)"),
    (lambda: zero_sum.exploitability(RPS, [1.0, 0.0, 0.0], [0.7, 0.7, -0.4]),
     "col must be non-negative and sum to 1"),
    (lambda: zero_sum.fictitious_play(RPS, 0), "iterations must be >= 1"),
])
def test_bad_input_is_refused_with_the_argument_named(call, message):
  with pytest.raises(ValueError, match=message):
    call()


def test_the_payoff_heat_map_is_a_png(tmp_path):
  eq = zero_sum.nash(RPS)
  path = tmp_path / "payoffs.png"
  zero_sum.plot_payoffs(RPS, str(path), row=eq.row, col=eq.col,
                        row_names=["rock", "paper", "scissors"])
  assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  with pytest.raises(ValueError, match="row_names and col_names must name 3 and 3"):
    zero_sum.plot_payoffs(RPS, str(tmp_path / "x.png"), row_names=["rock"])
  assert not (tmp_path / "x.png").exists()
