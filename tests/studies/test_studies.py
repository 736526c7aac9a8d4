"""Tiny runs of rlalign.studies: output structure and invariants, and that the OOD prediction
never reads OOD labels.

Compiling dominates these runs, so they take no SFT steps (the backbone and the policies stay
at their random init) and the SFT step is never compiled; ``lm_loss`` is checked on its own,
with stand-in log-probabilities. The classifiers do train, and the sampling program runs in full.
"""
import ast
import inspect
import json
import math
import os
import textwrap

import numpy as np
import pytest

from rlalign.data import addition
from rlalign.models import transformer as tfm
from rlalign.studies import agreement_on_the_line as aol
from rlalign.studies import uncertainty as unc


@pytest.fixture(scope="module")
def aline(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("aline"))
  record = aol.run(out, num_models=3, steps=24, pretrain_steps=0, batch_size=32,
                   num_train=400, num_eval=160, progress=False, verbose=False)
  return out, record


@pytest.fixture(scope="module")
def uncertainty(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("uncertainty"))
  record = unc.run(out, members=3, steps=0, samples=2, num_prompts=6, batch_size=32,
                   num_train=200, progress=False, verbose=False)
  return out, record


def _png_written(path):
  with open(path, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  assert os.path.getsize(path) > 1000


# ---- the toy shift ------------------------------------------------------------------------


def test_carries_and_dropped_carries_by_hand():
  # 47 + 85 = 132: the units and tens carry, the hundreds do not.
  assert aol.column_carries(47, 85) == [True, True, False]
  assert aol.count_carries(47, 85) == 2 and aol.count_carries(999, 1) == 3
  assert aol.answer_without_carry(47, 85, 0) == "221"  # 122: the tens lose the carry
  assert aol.answer_without_carry(47, 85, 1) == "23"   # 32: the hundreds lose it
  assert aol.answer_without_carry(47, 85, 2) == addition.correct_answer(47, 85)


@pytest.mark.parametrize("shift", tuple(aol.SHIFTS))
def test_examples_are_balanced_and_in_their_domain(shift):
  for domain in ("id", "ood"):
    low, high = aol.SHIFTS[shift][domain]
    inputs, labels = aol.make_examples(120, (low, high), "test", seed=3)
    assert labels.mean() == 0.5 and inputs.tokens.shape == (120, aol.SEQ_LEN)
    for row, mask, label in zip(inputs.tokens, inputs.mask, labels):
      text = aol.TOKENIZER.decode(row[mask])
      a, b = addition.parse_prompt(text[:aol.PROMPT_LEN])
      answer = text[aol.PROMPT_LEN:]
      assert low <= aol.count_carries(a, b) <= high
      assert addition.is_test_pair(a, b) and addition.is_well_formed(answer)
      assert (answer == addition.correct_answer(a, b)) == bool(label)


def test_lm_loss_scores_only_the_answer(monkeypatch):
  data = aol.sft_data(8, (0, 3), "train", seed=0)
  tokens, mask = data["tokens"], data["mask"]
  # Stand-in log-probabilities, so only the loss's own masking is under test.
  fake = np.random.default_rng(0).normal(size=(tokens.shape[0], tokens.shape[1] - 1))
  monkeypatch.setattr(tfm, "token_logprobs", lambda params, t, m, cfg: fake)
  loss = aol.lm_loss(None, tokens, mask, cfg=None)
  # fake[:, t] stands for token t + 1: the answer digits and EOS are tokens PROMPT_LEN on.
  targets = mask[:, 1:].copy()
  targets[:, :aol.PROMPT_LEN - 1] = False
  answers = [aol.TOKENIZER.decode(r[m])[aol.PROMPT_LEN:] for r, m in zip(tokens, mask)]
  assert targets.sum() == sum(len(a) + 1 for a in answers)
  assert float(loss) == pytest.approx(-fake[targets].mean(), rel=1e-5)


# ---- agreement-on-the-line ----------------------------------------------------------------


def test_agreement_outputs(aline):
  out, record = aline
  with open(os.path.join(out, "agreement.json")) as f:
    saved = json.load(f)
  for key in ("task", "members", "id_acc", "ood_acc", "id_agreement", "ood_agreement", "pairs",
              "predicted", "mae", "agreement_line", "accuracy_line", "correlation", "times"):
    assert key in saved
  assert len(saved["members"]) == 3 and len(saved["pairs"]) == 3
  for key in ("id_acc", "ood_acc", "id_agreement", "ood_agreement"):
    values = np.asarray(saved[key])
    assert np.all((values >= 0) & (values <= 1)), key
  truth = np.asarray(saved["ood_acc"])
  for method in aol.METHODS:
    predicted = np.asarray(saved["predicted"][method])
    assert predicted.shape == (3,) and np.all(np.isfinite(predicted))
    assert np.all((predicted >= 0) & (predicted <= 1))
    assert saved["mae"][method] == pytest.approx(np.mean(np.abs(predicted - truth)))
  np.testing.assert_allclose(saved["predicted"]["naive"], saved["id_acc"])
  _png_written(os.path.join(out, "agreement.png"))
  assert "MAE" in aol.table([aol.Member(**m) for m in saved["members"]], record)


def test_the_prediction_takes_no_ood_labels():
  assert list(inspect.signature(aol.predict).parameters) == [
      "id_acc", "id_agreement", "ood_agreement", "pairs"]
  assert list(inspect.signature(aol.observe).parameters) == [
      "id_predictions", "id_labels", "ood_predictions"]
  assert "labels" not in aol.Inputs._fields


def _reads_only_through(fn, name, callee):
  """Whether every read of ``name`` in ``fn``'s source is an argument of a call to ``callee``."""
  tree = ast.parse(textwrap.dedent(inspect.getsource(fn)))
  reads = {id(n) for n in ast.walk(tree)
           if isinstance(n, ast.Name) and n.id == name and isinstance(n.ctx, ast.Load)}
  passed = {id(a) for n in ast.walk(tree) if isinstance(n, ast.Call)
            and getattr(n.func, "id", None) == callee for a in n.args}
  return bool(reads) and reads <= passed


def test_ood_labels_flow_only_into_the_truth():
  assert _reads_only_through(aol.analyse, "ood_labels", "ood_truth")
  assert _reads_only_through(aol.run, "ood_labels", "analyse")


def test_ood_labels_change_the_truth_not_the_prediction():
  rng = np.random.default_rng(0)
  id_labels, ood_labels = rng.integers(0, 2, 400), rng.integers(0, 2, 400)
  # Four models right on a model-specific fraction of inputs.
  flips = rng.random((4, 400)) < np.array([0.1, 0.2, 0.3, 0.4])[:, None]
  id_pred = np.where(flips, 1 - id_labels, id_labels)
  ood_pred = np.where(np.roll(flips, 7, axis=1), 1 - ood_labels, ood_labels)
  first = aol.analyse(id_pred, id_labels, ood_pred, ood_labels)
  second = aol.analyse(id_pred, id_labels, ood_pred, 1 - ood_labels)
  for method in aol.METHODS:
    np.testing.assert_array_equal(first["predicted"][method], second["predicted"][method])
  np.testing.assert_allclose(second["ood_acc"], 1 - first["ood_acc"])


def test_the_cli_wants_three_models():
  with pytest.raises(SystemExit):
    aol.main(["--out=/nonexistent", "--models=2"])


# ---- uncertainty --------------------------------------------------------------------------


def test_uncertainty_outputs(uncertainty):
  out, record = uncertainty
  with open(os.path.join(out, "uncertainty.json")) as f:
    saved = json.load(f)
  for key in ("task", "id", "ood", "auroc_mostly_wrong", "auroc_mostly_wrong_within_ood",
              "per_prompt", "examples", "times"):
    assert key in saved
  members, samples = 3, 2
  for domain in ("id", "ood"):
    summary = saved[domain]
    assert 0 <= summary["sample_accuracy"] <= 1
    assert len(summary["member_accuracy"]) == members
    for kind, classes in (("ensemble", members * samples), ("paraphrase", 2 * samples)):
      parts = {k: np.asarray(saved["per_prompt"][domain][kind][k]) for k in unc.PARTS}
      assert parts["total"].shape == (6,)
      np.testing.assert_allclose(parts["total"], parts["aleatoric"] + parts["epistemic"],
                                 atol=1e-6)
      assert np.all(parts["epistemic"] >= -1e-6) and np.all(parts["aleatoric"] >= -1e-6)
      assert np.all(parts["total"] <= math.log(classes) + 1e-5)
      assert summary[kind]["total"] == pytest.approx(parts["total"].mean(), abs=1e-6)
    assert summary["penalty_mean"] <= 0
    for example in saved["examples"][domain]:
      # The reward term of every sample is -coef * its prompt's epistemic uncertainty.
      np.testing.assert_allclose(example["penalty"], -example["epistemic"], atol=1e-6)
      assert len(example["answers"]) == members and len(example["answers"][0]) == samples
  _png_written(os.path.join(out, "uncertainty.png"))
  assert "epistemic" in unc.table(record)


def test_auroc_by_hand():
  assert unc.auroc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == 0.75
  assert unc.auroc(np.array([1.0, 1.0]), np.array([0, 1])) == 0.5
  assert unc.auroc(np.array([1.0, 2.0]), np.array([1, 1])) is None
