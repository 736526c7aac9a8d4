"""Tests for rlalign.rewards: the rule-based verifiers and the reward interface."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlalign import rewards
from rlalign.rewards import base, verifiers

PAD, EOS = 0, 2


def _answers(rows, width):
  """Right-padded answer tokens and mask from lists of ids."""
  tokens = np.full((len(rows), width), PAD, np.int32)
  mask = np.zeros((len(rows), width), bool)
  for i, row in enumerate(rows):
    tokens[i, :len(row)] = row
    mask[i, :len(row)] = True
  return jnp.asarray(tokens), jnp.asarray(mask)


def _exact_match(completions, answers, answer_width=4):
  ans, ans_mask = _answers(answers, answer_width)
  comp = jnp.asarray(np.array(completions, np.int32))
  return verifiers.exact_match({"completion_tokens": comp, "answer_tokens": ans,
                                "answer_mask": ans_mask})


def test_exact_match_cases():
  answer = [5, 7, EOS]
  completions = [
      [5, 7, EOS, PAD, PAD],   # exact
      [5, 8, EOS, PAD, PAD],   # wrong digit
      [5, 7, PAD, PAD, PAD],   # missing EOS (ran out or never stopped)
      [5, 7, 9, EOS, PAD],     # an extra token before EOS
      [5, 7, 7, 7, 7],         # right prefix, no stop
      [EOS, PAD, PAD, PAD, PAD],
  ]
  out = _exact_match(completions, [answer] * len(completions))
  chex.assert_shape(out, (6,))
  chex.assert_type(out, jnp.float32)
  np.testing.assert_array_equal(np.asarray(out), [1.0, 0.0, 0.0, 0.0, 0.0, 0.0])


def test_exact_match_per_row_answers_of_different_lengths():
  answers = [[3, EOS], [4, 5, 6, EOS], [EOS]]
  completions = [[3, EOS, PAD, PAD, PAD], [4, 5, 6, EOS, PAD], [EOS, PAD, PAD, PAD, PAD]]
  np.testing.assert_array_equal(np.asarray(_exact_match(completions, answers)), [1, 1, 1])
  # Swap rows 0 and 2: neither matches its answer any more.
  completions = [completions[2], completions[1], completions[0]]
  np.testing.assert_array_equal(np.asarray(_exact_match(completions, answers)), [0, 1, 0])


def test_exact_match_completion_shorter_than_answer():
  answers = [[5, 7, EOS], [5, EOS]]
  # Width-2 completions: row 0 cannot contain the 3-token answer; row 1 matches exactly.
  out = _exact_match([[5, 7], [5, EOS]], answers)
  np.testing.assert_array_equal(np.asarray(out), [0.0, 1.0])


def test_exact_match_empty_answer_scores_zero():
  out = _exact_match([[PAD, PAD, PAD], [EOS, PAD, PAD]], [[], []])
  np.testing.assert_array_equal(np.asarray(out), [0.0, 0.0])


def test_exact_match_jits():
  answers = [[5, 7, EOS]]
  ans, ans_mask = _answers(answers, 4)
  fn = jax.jit(verifiers.exact_match)
  out = fn({"completion_tokens": jnp.array([[5, 7, EOS]], jnp.int32), "answer_tokens": ans,
            "answer_mask": ans_mask})
  np.testing.assert_array_equal(np.asarray(out), [1.0])


def test_stopped():
  out = verifiers.stopped({"completion_stopped": jnp.array([True, False, True])})
  chex.assert_type(out, jnp.float32)
  np.testing.assert_array_equal(np.asarray(out), [1.0, 0.0, 1.0])


def test_exact_match_text_strips_whitespace():
  out = verifiers.exact_match_text(["p1", "p2", "p3", "p4"],
                                   [" 12\n", "12", "1 2", ""], ["12", "13", "12", ""])
  np.testing.assert_array_equal(out, [1.0, 0.0, 0.0, 1.0])


def test_registry_kinds():
  assert base.get("exact_match").in_graph
  assert base.get("stopped").in_graph
  assert not base.get("exact_match_text").in_graph
  assert base.get("exact_match").fn is verifiers.exact_match
  assert {"exact_match", "stopped", "exact_match_text"} <= set(rewards.names())
  with pytest.raises(KeyError, match="'nope'"):
    base.get("nope")


def test_score_in_graph_only_runs_in_graph_rewards():
  scores = base.score_in_graph(
      [base.RewardTerm("stopped"), base.RewardTerm("exact_match_text")],
      {"completion_stopped": jnp.array([True, False])}, {})
  assert set(scores) == {"stopped"}
  np.testing.assert_array_equal(np.asarray(scores["stopped"]), [1.0, 0.0])


def test_score_host_checks_shape_and_skips_in_graph():
  if "bad_shape" not in base.names():
    base.host("bad_shape")(lambda p, c, a: np.zeros((len(p), 2)))
  with pytest.raises(ValueError) as e:
    base.score_host([base.RewardTerm("bad_shape")], ["a", "b"], ["x", "y"], ["x", "z"])
  assert "'bad_shape'" in str(e.value) and "(2, 2)" in str(e.value) and "(2,)" in str(e.value)
  scores = base.score_host([base.RewardTerm("exact_match"), base.RewardTerm("exact_match_text")],
                           ["a", "b"], ["x", "y"], ["x", "z"])
  assert set(scores) == {"exact_match_text"}
  assert scores["exact_match_text"].dtype == np.float32
  np.testing.assert_array_equal(scores["exact_match_text"], [1.0, 0.0])


def test_combine_weights():
  scores = {"a": jnp.array([1.0, 0.0, 1.0]), "b": np.array([1, 1, 0]), "c": jnp.array([9.0] * 3)}
  out = base.combine([base.RewardTerm("a", 0.5), base.RewardTerm("b", 2.0)], scores)
  chex.assert_trees_all_close(out, np.array([0.5 + 2.0, 2.0, 0.5], np.float32))
  out = base.combine([base.RewardTerm("a", 1.0)], scores)
  chex.assert_trees_all_close(out, np.array([1.0, 0.0, 1.0], np.float32))


def test_overlong_penalty_by_hand():
  """DAPO: 0 up to L_max - L_buf tokens, then -(|o| - (L_max - L_buf)) / L_buf."""
  from rlalign.rewards import verifiers as v
  lengths = np.array([2, 6, 7, 8])
  mask = jnp.asarray(np.arange(8)[None, :] < lengths[:, None])
  got = v.overlong({"completion_mask": mask}, None, v.OverlongSettings(buffer=4))
  np.testing.assert_allclose(got, [0.0, -0.5, -0.75, -1.0])
  got = v.overlong({"completion_mask": mask}, None, v.OverlongSettings(max_length=10, buffer=4))
  np.testing.assert_allclose(got, [0.0, 0.0, -0.25, -0.5])
  with pytest.raises(ValueError, match="buffer"):
    v.OverlongSettings(max_length=2, buffer=4).validate()


def test_length_and_answer_digits_by_hand():
  mask = jnp.asarray([[1, 1, 1, 0], [1, 0, 0, 0]], bool)
  np.testing.assert_allclose(verifiers.length({"completion_mask": mask}), [0.75, 0.25])
  np.testing.assert_allclose(
      verifiers.length({"completion_mask": mask}, None, verifiers.LengthSettings(False)), [3, 1])
  ans, ans_mask = _answers([[5, 7, EOS], [4, EOS]], 3)
  comp = jnp.asarray([[5, 8, EOS, PAD], [4, EOS, PAD, PAD]], jnp.int32)
  comp_mask = jnp.asarray([[1, 1, 1, 0], [1, 1, 0, 0]], bool)
  got = verifiers.answer_digits({"completion_tokens": comp, "completion_mask": comp_mask,
                                 "answer_tokens": ans, "answer_mask": ans_mask})
  np.testing.assert_allclose(got, [2 / 3, 1.0])
