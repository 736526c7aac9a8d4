"""The easy-to-hard recipe: its checks, a run that logs the gold hard-problem metrics and the
verifier's verdicts against gold, and the same recipe from a tiny random Hugging Face model."""
import json
import os

import jax
import numpy as np
import pytest

from rlalign import config as config_lib
from rlalign import recipes
from tests.configs import load_config, typed_config

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SMOKE = os.path.join(REPO, "configs", "easy_to_hard_addition.py") + ":cotrain,smoke"


def typed(arg, tmp_path, **changes):
  return typed_config("easy_to_hard_addition", arg, tmp_path, **changes)


@pytest.mark.parametrize("changes, message", [
    ({"data.eval_splits": ()}, "data.eval_splits must name the held-out split"),
    ({"recipe.verifier_rows": "all"}, "recipe.verifier_rows must be 'labelled'"),
    ({"phases.generate.rewards": {"exact_match": {"rows": "unlabelled"}}},
     "the label reward cannot score unlabelled rows"),
    ({"phases.generate.rewards": {"exact_match": {"rows": "hard"}}},
     "rows must be one of"),
    ({"data.hard_fraction": 1.0}, "both labelled \\(easy\\) and unlabelled"),
])
def test_the_recipe_refuses_runs_that_could_not_measure_or_would_mislabel(
    changes, message, tmp_path):
  with pytest.raises(ValueError, match=message):
    typed("cotrain,smoke", tmp_path, **changes)


def test_a_run_logs_gold_hard_accuracy_and_the_verifiers_false_positives(tmp_path, cli):
  workdir = str(tmp_path / "run")
  cli.run_main(workdir, config=SMOKE)
  summary = json.load(open(os.path.join(workdir, "summary.json")))
  final = summary["phases"]["alternating"]["eval"]
  for split in ("", "test_hard/"):
    for metric in ("pass@1_greedy", "pass@1_sampled", "verifier_accuracy", "verifier_gold_rate"):
      assert 0.0 <= final[f"eval/{split}{metric}"] <= 1.0, (split, metric)
    # Rates over a class that has no sample (a smoke generator is never right) are null.
    one_class = final[f"eval/{split}verifier_gold_rate"] in (0.0, 1.0)
    for metric in ("verifier_balanced_accuracy", "verifier_auroc"):
      value = final[f"eval/{split}{metric}"]
      assert (value is None) if one_class else (0.0 <= value <= 1.0), (split, metric)
  assert "eval/test_hard/pass@1_greedy" in summary["phases"]["warm_start"]["eval"]
  records = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  trained = [r for r in records if "reward/verifier" in r]
  assert trained and all(np.isfinite(r["verifier/loss"]) for r in trained)
  # The verifier learns on the labelled rows only: its label rate (exact match over them)
  # times their share is exact match over every row, which is 0 where there is no label.
  assert any(0 < r["verifier/labelled_fraction"] < 1 for r in trained)
  for r in trained:
    np.testing.assert_allclose(r["verifier/label_rate"] * r["verifier/labelled_fraction"],
                               r["reward/exact_match"], atol=1e-6)


@pytest.mark.slow
def test_from_a_hugging_face_checkpoint(tmp_path):
  from tests.rl import test_hf_grpo as hf_test
  ckpt = str(tmp_path / "ckpt")
  os.makedirs(ckpt)
  hf_test.write_checkpoint(ckpt, hf_test.write_tokenizer(ckpt))
  config = load_config("easy_to_hard_addition", f"hf:{ckpt},smoke")
  config.data.data_dir = str(tmp_path / "tfds")
  config.mesh.ici = (-1, 1, 1)  # the 8 fake devices of tests/conftest.py: 8 prompts a step
  config.phases.generate.batch_size = config.phases.verify.batch_size = 32
  cfg = config_lib.from_config_dict(config)
  assert cfg.data.prompt_format == "chat" and cfg.role_configs["generator"].weights.path == ckpt
  workdir = str(tmp_path / "run")
  summary = recipes.run(cfg, workdir)
  final = summary["phases"]["alternating"]["eval"]
  assert "eval/test_hard/verifier_false_positive_rate" in final
  from rlalign.models import hf
  _, start = hf.load_hf_checkpoint(ckpt)
  _, trained = hf.load_hf_checkpoint(os.path.join(workdir, "hf_generator"))
  moved = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
              for a, b in zip(jax.tree.leaves(start), jax.tree.leaves(trained)))
  assert moved > 1e-4, "the warm start and co-training should have changed the generator"
