"""The rubric's in-graph gold judge against the host one (``data.rubric.points``), on the
teacher's answers and on strings written to break each criterion."""
import jax.numpy as jnp
import numpy as np
import pytest

from rlalign.data import rubric, tokenizer as tok_lib
from rlalign.rewards import base
from rlalign.rewards import rubric as rubric_reward

TOK = tok_lib.CharTokenizer(tok_lib.ASCII_ALPHABET)
SETTINGS = rubric_reward.RubricSettings().resolve(TOK)


def rollouts(pairs, width=9):
  """(spec digits, completion text) rows: the completion stops with EOS, then pads."""
  answers, completions, masks = [], [], []
  for spec, text in pairs:
    answers.append(TOK.encode(spec) + [TOK.eos_id])
    ids = (TOK.encode(text) + [TOK.eos_id])[:width]
    completions.append(ids + [TOK.pad_id] * (width - len(ids)))
    masks.append([True] * len(ids) + [False] * (width - len(ids)))
  return {"answer_tokens": jnp.asarray(answers), "answer_mask": jnp.ones((len(pairs), 5), bool),
          "completion_tokens": jnp.asarray(completions), "completion_mask": jnp.asarray(masks)}


def test_in_graph_criteria_equal_the_host_judge():
  rng = np.random.default_rng(0)
  pairs = [(r["answer"], r["demonstration"]) for r in rubric.generate("train", 300, 0.5, 1)]
  pairs += [("5387", "37218"), ("5387", "3721"), ("4387", "4x28"), ("4387", ""),
            ("6000", "0000000"), ("4999", "9 99"), ("5123", "1a3b3")]
  for _ in range(100):  # random strings of digits and letters, 0..8 long
    text = "".join(rng.choice(list("0123456789ab"), size=rng.integers(0, 9)))
    pairs.append(("".join(map(str, rng.integers(0, 10, 4))), text))
  got = np.asarray(rubric_reward.criteria(rollouts(pairs), SETTINGS))
  want = np.stack([rubric.points([int(c) for c in spec], text) for spec, text in pairs])
  np.testing.assert_array_equal(got, want)
  reward = base.get("rubric_points").fn(rollouts(pairs), {}, SETTINGS)
  np.testing.assert_allclose(np.asarray(reward), want.mean(1), rtol=1e-6)


def test_a_completion_cut_before_its_stop_is_read_to_its_end():
  got = rubric_reward.criteria(rollouts([("4387", "3779888")], width=4), SETTINGS)
  assert np.asarray(got).tolist() == [[True, True, True, False, True]]  # "3779", then cut


def test_unresolved_and_merging_tokenizers_are_refused():
  with pytest.raises(ValueError, match="not been resolved"):
    rubric_reward.criteria(rollouts([("4387", "3")]), rubric_reward.RubricSettings())

  class Merging:
    eos_id = 2
    def encode(self, text):
      return [3] if len(text) > 1 else [10 + int(text)]
  with pytest.raises(ValueError, match="merges digits"):
    rubric_reward.RubricSettings().resolve(Merging())
