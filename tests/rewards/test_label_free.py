"""Label-free rewards and row selection: majority vote against a Counter over decoded groups,
self-confidence by hand, ``rows`` zeroing the other rows, and the config forms."""
import collections

import jax.numpy as jnp
import numpy as np
import pytest

from rlalign import config as config_lib
from rlalign.rewards import base, label_free, transforms
from rlalign.rewards.transforms import TransformSpec
from rlalign.rl import experiment


def rollouts(prompts, completions, stopped=None, answers=None, logprobs=None):
  """Rows of token lists (0 = pad) into padded arrays."""
  def pad(rows, width):
    tokens = np.zeros((len(rows), width), np.int32)
    for i, r in enumerate(rows):
      tokens[i, :len(r)] = r
    return tokens, tokens != 0
  pt, pm = pad(prompts, 4)
  ct, cm = pad(completions, 5)
  at, am = pad(answers or [[] for _ in prompts], 5)
  out = {"prompt_tokens": jnp.asarray(pt), "prompt_mask": jnp.asarray(pm),
         "completion_tokens": jnp.asarray(ct), "completion_mask": jnp.asarray(cm),
         "completion_stopped": jnp.asarray(stopped if stopped is not None
                                           else [True] * len(prompts)),
         "answer_tokens": jnp.asarray(at), "answer_mask": jnp.asarray(am)}
  if logprobs is not None:
    out["logprobs"] = jnp.asarray(logprobs, jnp.float32)
  return out


def reference_majority(prompts, completions, stopped):
  """Per prompt, the most common stopped completion (ties: sampled first); 1 where a row is
  it."""
  out = []
  for p, c, s in zip(prompts, completions, stopped):
    group = [(tuple(c2), i) for i, (p2, c2, s2) in enumerate(zip(prompts, completions, stopped))
             if p2 == p and s2]
    if not s or not group:
      out.append(0.0)
      continue
    counts = collections.Counter(k for k, _ in group)
    best = max(counts.values())
    first = min(i for k, i in group if counts[k] == best)
    out.append(float(tuple(c) == tuple(completions[first])))
  return out


def test_majority_vote_matches_a_counter_on_random_groups():
  rng = np.random.default_rng(0)
  for _ in range(20):
    prompts = [[1 + int(rng.integers(3))] for _ in range(12)]  # prompts repeat, groups mix
    completions = [[int(x) for x in rng.integers(1, 3, size=int(rng.integers(1, 3)))]
                   for _ in range(12)]
    stopped = [bool(x) for x in rng.random(12) < 0.8]
    got = label_free.majority_vote(rollouts(prompts, completions, stopped))
    np.testing.assert_array_equal(got, reference_majority(prompts, completions, stopped))


def test_majority_vote_by_hand():
  prompts = [[5]] * 4 + [[6]] * 4
  completions = [[1], [2], [2], [3],   # "2" wins
                 [4], [7], [7, 1], [4]]  # "4" twice; [7] and [7, 1] differ
  out = label_free.majority_vote(rollouts(prompts, completions))
  np.testing.assert_array_equal(out, [0, 1, 1, 0, 1, 0, 0, 1])
  # A tie goes to the answer sampled first; an unstopped completion is no answer and no vote.
  out = label_free.majority_vote(rollouts([[5]] * 4, [[1], [2], [2], [1]],
                                          stopped=[True, True, True, False]))
  np.testing.assert_array_equal(out, [0, 1, 1, 0])
  out = label_free.majority_vote(rollouts([[5]] * 2, [[1], [2]]))
  np.testing.assert_array_equal(out, [1, 0])


def test_self_confidence_is_the_geometric_mean_probability_of_the_answer():
  logprobs = np.log(np.array([[0.5, 0.5, 1, 1, 1], [0.9, 0.1, 0.4, 1, 1], [0.2, 1, 1, 1, 1]]))
  r = rollouts([[1]] * 3, [[3, 4], [3, 4, 5], [3]], stopped=[True, True, False],
               logprobs=logprobs)
  out = label_free.self_confidence(r)
  np.testing.assert_allclose(out, [0.5, (0.9 * 0.1 * 0.4) ** (1 / 3), 0.0], rtol=1e-5)
  del r["logprobs"]
  with pytest.raises(ValueError, match="log-probs"):
    label_free.self_confidence(r)


def test_rows_scores_only_the_chosen_rows():
  r = rollouts([[1], [1], [2], [2]], [[3], [3], [3], [4]],
               answers=[[3], [3], [], []])
  assert list(base.labelled_rows(r)) == [True, True, False, False]
  terms = [base.RewardTerm("majority_vote", source="all"),
           base.RewardTerm("majority_vote", source="unlabelled", rows="unlabelled"),
           base.RewardTerm("majority_vote", source="labelled", rows="labelled")]
  scores = base.score_in_graph(terms, r, {})
  np.testing.assert_array_equal(scores["all"], [1, 1, 1, 0])
  np.testing.assert_array_equal(scores["unlabelled"], [0, 0, 1, 0])
  np.testing.assert_array_equal(scores["labelled"], [1, 1, 0, 0])
  # Through the transforms: the rows a term skips stay 0 (sigmoid(0) would be 0.5).
  sig = (TransformSpec("sigmoid", transforms.get("sigmoid").settings()),)
  terms = [base.RewardTerm("majority_vote", 2.0, source="u", rows="unlabelled",
                           transforms=sig)]
  total = base.combine(terms, base.score_in_graph(terms, r, {}), group_size=2)
  s1, s0 = 1 / (1 + np.exp(-1.0)), 0.5
  np.testing.assert_allclose(total, [0, 0, 2 * s1, 2 * s0], rtol=1e-6)
  assert set(base.sequence_scores(terms, base.score_in_graph(terms, r, {}))) == {"u"}


def test_rows_in_configs_round_trip_and_bad_values_are_named():
  terms = config_lib.rewards_from({"exact_match": 1.0, "v": {
      "name": "majority_vote", "rows": "unlabelled", "transforms": ("sigmoid",)}}, "rewards")
  assert terms[1].rows == "unlabelled" and terms[0].rows == "all"
  assert config_lib.rewards_from(experiment.to_dict(terms), "rewards") == terms
  bad = config_lib.rewards_from({"majority_vote": {"rows": "hard"}}, "phases.rl.rewards")
  with pytest.raises(ValueError, match=r"phases.rl.rewards.majority_vote.rows must be one of"):
    base.check_terms(bad, "phases.rl.rewards")
  hosted = config_lib.rewards_from({"exact_match_text": {"rows": "labelled"}}, "rewards")
  with pytest.raises(ValueError, match="read on the host"):
    base.check_terms(hosted, "rewards")


def test_sigmoid_transform_by_hand():
  out = transforms.apply(TransformSpec("sigmoid", transforms.get("sigmoid").settings()),
                         np.array([0.0, 2.0, -1.0]), transforms.Context(1, None))
  np.testing.assert_allclose(out, 1 / (1 + np.exp(-np.array([0.0, 2.0, -1.0]))), rtol=1e-6)
