"""Step verdicts: the verifier task's targets, the outcome reward of written verdicts, and the
teacher-forced step probabilities, each by hand or against a plain forward pass per step."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlalign import rewards
from rlalign.data.tokenizer import ASCII_ALPHABET, CharTokenizer
from rlalign.models import transformer as tfm
from rlalign.rewards import base, judges, step_verdicts as sv

TOK = CharTokenizer(ASCII_ALPHABET)
MODEL = tfm.ModelConfig(vocab_size=128, d_model=32, n_layers=2, n_heads=2, n_kv_heads=2,
                        head_dim=16, d_ff=64, tie_embeddings=False)
SETTINGS = sv.StepVerifierSettings(yes="1", no="0",
                                   template=judges.Template(middle="", suffix=" steps? ")
                                   ).resolve(TOK)


def _rows(texts, width):
  tokens = np.full((len(texts), width), TOK.pad_id, np.int32)
  mask = np.zeros((len(texts), width), bool)
  for i, ids in enumerate(texts):
    tokens[i, :len(ids)], mask[i, :len(ids)] = ids, True
  return jnp.asarray(tokens), jnp.asarray(mask)


def _rollouts_left(texts, width):
  tokens = np.full((len(texts), width), TOK.pad_id, np.int32)
  mask = np.zeros((len(texts), width), bool)
  for i, ids in enumerate(texts):
    tokens[i, width - len(ids):], mask[i, width - len(ids):] = ids, True
  return jnp.asarray(tokens), jnp.asarray(mask)


def _generator_rollouts(pairs, N=6):
  prompts = [[TOK.bos_id] + TOK.encode(p) for p, _ in pairs]
  completions = [TOK.encode(c) + [TOK.eos_id] for _, c in pairs]
  pt, pm = _rollouts_left(prompts, 10)
  ct, cm = _rows(completions, N)
  return {"prompt_tokens": pt, "prompt_mask": pm, "completion_tokens": ct,
          "completion_mask": cm}


def test_words_must_be_one_token_each():
  with pytest.raises(ValueError, match="the verdict 'ok' is 2 tokens in this tokenizer; it must be one"):
    sv.StepVerifierSettings(yes="ok").resolve(TOK)
  with pytest.raises(ValueError, match="two different non-empty words"):
    sv.StepVerifierSettings(yes="1", no="1").validate("rewards.steps")
  with pytest.raises(ValueError, match="have not been tokenised"):
    sv.step_verdicts({}, {}, sv.StepVerdictSettings())


def test_outcome_targets_write_the_label_once_per_step():
  rollouts = _generator_rollouts([("123+456=", "579"), ("123+456=", "57"), ("1+1=", "")])
  steps = sv.steps_of(rollouts, SETTINGS)
  np.testing.assert_array_equal(steps.sum(axis=1), [3, 2, 0])   # the EOS is not a step
  tokens, mask = sv.outcome_targets(steps, jnp.asarray([True, False, True]), SETTINGS,
                                    TOK.eos_id)
  texts = [TOK.decode([int(t) for t, m in zip(row, keep) if m and t != TOK.eos_id])
           for row, keep in zip(np.asarray(tokens), np.asarray(mask))]
  assert texts == ["111", "00", ""]
  np.testing.assert_array_equal(np.asarray(mask).sum(axis=1), [4, 3, 1])
  assert all(np.asarray(tokens)[i, n] == TOK.eos_id for i, n in enumerate([3, 2, 0]))


def test_step_delimiters_end_steps_and_the_last_token_ends_the_last():
  settings = dataclasses.replace(SETTINGS, delimiter=";", delimiter_id=-2).resolve(TOK)
  rollouts = _generator_rollouts([("1+1=", "ab;cd;e"), ("1+1=", "abc")], N=8)
  steps = np.asarray(sv.steps_of(rollouts, settings))
  np.testing.assert_array_equal(steps[0, :8], [0, 0, 1, 0, 0, 1, 1, 0])
  np.testing.assert_array_equal(steps[1, :4], [0, 0, 1, 0])


def _verifier_rollouts(written, labels, steps):
  """Verifier tasks: the answer is the label once per step then EOS; the completion is
  ``written`` (text then EOS, or exactly the given ids)."""
  answers = [TOK.encode(("1" if right else "0") * n) + [TOK.eos_id]
             for right, n in zip(labels, steps)]
  completions = [w if isinstance(w, list) else TOK.encode(w) + [TOK.eos_id] for w in written]
  at, am = _rows(answers, 6)
  ct, cm = _rows(completions, 6)
  return {"answer_tokens": at, "answer_mask": am, "completion_tokens": ct,
          "completion_mask": cm}


@pytest.mark.parametrize("written, right, steps, reward", [
    ("111", True, 3, 1.0),     # every step judged right, and it is
    ("110", False, 3, 1.0),    # a step judged wrong, and the answer is wrong
    ("011", False, 3, 1.0),    # which step is not checked: the label is the outcome alone
    ("111", False, 3, 0.0),    # passed a wrong answer
    ("101", True, 3, 0.0),     # failed a right one
    ("11", True, 3, 0.0),      # a verdict short
    ("1111", True, 3, 0.0),    # a verdict too many
    ("1a1", True, 3, 0.0),     # not a verdict
    ("0", False, 1, 1.0),
    ("", True, 0, 0.0),        # nothing to judge earns nothing
])
def test_step_verdicts_reward_written_verdicts_by_the_outcome_alone(written, right, steps,
                                                                   reward):
  rollouts = _verifier_rollouts([written], [right], [steps])
  got = sv.step_verdicts(rollouts, {}, SETTINGS)
  assert float(got[0]) == reward


def test_a_verdict_string_that_does_not_stop_earns_nothing():
  rollouts = _verifier_rollouts([TOK.encode("111") + TOK.encode("1")], [True], [3])
  rollouts["completion_mask"] = rollouts["completion_mask"].at[0, 4:].set(False)
  assert float(sv.step_verdicts(rollouts, {}, SETTINGS)[0]) == 0.0
  term = base.RewardTerm("step_verdicts", settings=SETTINGS)   # a registered reward
  assert rewards.get("step_verdicts").in_graph and term.key == "step_verdicts"


def test_step_probabilities_equal_one_forward_pass_per_step():
  """Each step's P(yes) is the verifier's next-token distribution after the template and a
  "yes" for every earlier step, computed here one prefix at a time without padding."""
  params = tfm.init(MODEL, jax.random.PRNGKey(0))
  pairs = [("123+456=", "579"), ("12+3=", "51"), ("7+7=", "41")]
  rollouts = _generator_rollouts(pairs)
  values, steps = sv.step_probabilities(params, MODEL, rollouts, SETTINGS)
  values, steps = np.asarray(values), np.asarray(steps)
  yes, no = SETTINGS.yes_id, SETTINGS.no_id
  for i, (prompt, answer) in enumerate(pairs):
    context = [TOK.bos_id] + TOK.encode(prompt) + TOK.encode(answer) + TOK.encode(" steps? ")
    for k in range(len(answer)):
      ids = jnp.asarray([context + [yes] * k], jnp.int32)
      mask = jnp.ones_like(ids, bool)
      hidden, _ = tfm.forward(params, ids, tfm.positions_from_mask(mask), mask, MODEL)
      logits = np.asarray(tfm.lm_logits(params, hidden[:, -1], MODEL))[0]
      want = 1 / (1 + np.exp(-(logits[yes] - logits[no])))
      np.testing.assert_allclose(values[i, k], want, rtol=2e-4, atol=1e-6)
    assert steps[i].sum() == len(answer) and not steps[i, len(answer):].any()
    assert (values[i, len(answer):] == 0).all()


def test_lm_logits_of_chosen_ids_are_those_columns_of_the_full_logits():
  for tied in (True, False):
    model = dataclasses.replace(MODEL, tie_embeddings=tied)
    params = tfm.init(model, jax.random.PRNGKey(1))
    hidden = jax.random.normal(jax.random.PRNGKey(2), (3, 4, model.d_model))
    full = tfm.lm_logits(params, hidden, model)
    np.testing.assert_allclose(tfm.lm_logits(params, hidden, model, ids=(7, 3)),
                               full[..., [7, 3]], rtol=1e-5, atol=1e-6)
