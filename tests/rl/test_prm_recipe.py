"""The PRM recipe end to end at smoke size: the alternating recipe trains a process reward
model on Monte-Carlo step labels while GRPO trains on its step scores, and a run killed
after its first checkpoint resumes to the same final models."""
import json
import os

import numpy as np
import pytest

from tests.conftest import REPO

CONFIG = os.path.join(REPO, "configs", "prm_addition.py") + ":smoke"


@pytest.mark.slow
def test_prm_recipe_runs_and_logs_step_metrics(cli, tmp_path):
  workdir = str(tmp_path / "run")
  cli.run_main(workdir, config=CONFIG)
  records = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  trained = [r for r in records if "verifier/step_accuracy" in r]
  assert trained, "no PRM step was logged"
  last = trained[-1]
  # Every reversed-sum digit is a step; the smoke answers have 1 to 4 digits and an EOS.
  assert 1.0 <= last["verifier/steps_per_row"] <= 5.0
  assert 0.0 <= last["verifier/label_rate"] <= 1.0
  assert np.isfinite(last["reward/prm"]) and 0.0 <= last["reward/prm"] <= 1.0
  step, params = cli.final_params(workdir, phase="alternating", role="prm", config=CONFIG)
  assert step == 4 and np.isfinite(np.asarray(params["scalar_head"]["w"])).all()
