"""The pointwise verifier loss: binary cross-entropy by hand, class weights, and a label mask
that is the same as dropping the unlabelled rows."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlalign.objectives import base, pointwise
from rlalign.rl import evaluation

SCORES = np.array([2.0, -1.0, 0.5, -0.2, 3.0])
LABELS = np.array([1.0, 0.0, 0.0, 1.0, 1.0])


def call(scores, labels, mask=None, positive_weight=1.0, balanced=False):
  batch = {"labels": jnp.asarray(labels, jnp.float32)}
  if mask is not None:
    batch["label_mask"] = jnp.asarray(mask)
  outputs = {"model": base.ModelOutputs(scores=jnp.asarray(scores, jnp.float32))}
  return pointwise.pointwise_loss(pointwise.PointwiseConfig(positive_weight, balanced),
                                  outputs, batch)


def bce(s, y):
  p = 1 / (1 + math.exp(-s))
  return -(y * math.log(p) + (1 - y) * math.log(1 - p))


def test_bce_and_verdict_metrics_by_hand():
  loss, m = call(SCORES, LABELS)
  terms = [bce(s, y) for s, y in zip(SCORES, LABELS)]
  np.testing.assert_allclose(loss, np.mean(terms), rtol=1e-6)
  # verdicts (score > 0): yes, no, yes, no, yes against 1, 0, 0, 1, 1
  np.testing.assert_allclose(m["accuracy"], 3 / 5)
  np.testing.assert_allclose(m["true_positive_rate"], 2 / 3)
  np.testing.assert_allclose(m["false_positive_rate"], 1 / 2)
  np.testing.assert_allclose(m["balanced_accuracy"], 0.5 * (2 / 3 + 1 / 2))
  loss, _ = call(SCORES, LABELS, positive_weight=3.0)
  w = np.where(LABELS > 0.5, 3.0, 1.0)
  np.testing.assert_allclose(loss, np.sum(w * terms) / np.sum(w), rtol=1e-6)


def test_balanced_classes_weigh_the_same_by_hand():
  loss, _ = call(SCORES, LABELS, balanced=True)
  terms = np.array([bce(s, y) for s, y in zip(SCORES, LABELS)])
  # three positives and two negatives: each class's mean loss, averaged
  want = 0.5 * (terms[LABELS > 0.5].mean() + terms[LABELS < 0.5].mean())
  np.testing.assert_allclose(loss, want, rtol=1e-6)
  only_positive, _ = call(SCORES[[0, 3]], LABELS[[0, 3]], balanced=True)
  np.testing.assert_allclose(only_positive, terms[[0, 3]].mean(), rtol=1e-6)


@pytest.mark.parametrize("positive_weight, balanced", [(1.0, False), (2.5, False), (1.0, True)])
def test_a_label_mask_is_the_loss_without_the_unlabelled_rows(positive_weight, balanced):
  keep = np.array([True, False, True, True, False])
  masked = call(SCORES, LABELS, keep, positive_weight, balanced)
  subset = call(SCORES[keep], LABELS[keep], None, positive_weight, balanced)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), masked, subset)
  grad = lambda s, y, k: jax.grad(lambda x: call(x, y, k, positive_weight, balanced)[0])(
      jnp.asarray(s, jnp.float32))
  g = grad(SCORES, LABELS, keep)
  np.testing.assert_allclose(g[~keep], 0.0)
  np.testing.assert_allclose(g[keep], grad(SCORES[keep], LABELS[keep], None), rtol=1e-6)


def test_held_out_verdict_summary_by_hand():
  verdicts = np.array([1.0, -1.0, 0.3, -0.1, 2.0, 0.0])  # passes: 1, 0, 1, 0, 1, 0
  gold = np.array([1.0, 1.0, 0.0, 0.0, 1.0, 0.0])
  out = evaluation.verdict_summary(verdicts, gold)
  assert out == pytest.approx({"accuracy": 4 / 6, "true_positive_rate": 2 / 3,
                               "false_positive_rate": 1 / 3,
                               "balanced_accuracy": 0.5 * (2 / 3 + 2 / 3),
                               "gold_rate": 0.5,
                               # right 1.0, -1.0, 2.0 against wrong 0.3, -0.1, 0.0: 6 of 9
                               "auroc": 6 / 9})
  none_wrong = evaluation.verdict_summary(np.array([1.0, -1.0]), np.array([1.0, 1.0]))
  assert none_wrong["true_positive_rate"] == 0.5 and none_wrong["accuracy"] == 0.5
  for undefined in ("false_positive_rate", "balanced_accuracy", "auroc"):
    assert np.isnan(none_wrong[undefined]), undefined
  tied = evaluation.verdict_summary(np.array([1.0, 1.0, 1.0]), np.array([1.0, 0.0, 1.0]))
  assert tied["auroc"] == 0.5 and tied["balanced_accuracy"] == 0.5
