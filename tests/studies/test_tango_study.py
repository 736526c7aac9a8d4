"""The RL Tango study end to end at smoke size: every arm, the table, the PNG, and a rerun
that reads finished arms back."""
import json
import os

import pytest

from rlalign.studies import tango

pytestmark = pytest.mark.slow


def test_study_runs_every_arm_tables_them_and_resumes(tmp_path, monkeypatch):
  monkeypatch.setenv("XLA_FLAGS", "")  # the arms' processes run on one CPU device
  out = str(tmp_path / "study")
  results = tango.main([f"--out={out}", "--smoke"])
  assert set(results) == {"tango", "frozen", "grpo"}
  for arm, res in results.items():
    for key in ("eval/pass@1_greedy", "eval/verifier_written_accuracy",
                "eval/near_miss_localised"):
      assert 0.0 <= res["final"][key] <= 1.0, (arm, key)
    # Every arm starts from one warm start, evaluated the same way.
    assert res["warm_start"] == results["tango"]["warm_start"]
    assert res["curves"]["eval/pass@1_greedy"][0][0] == 0
  # The frozen verifier ends where it started.
  frozen = results["frozen"]
  assert frozen["final"]["eval/near_miss_accuracy"] == frozen["warm_start"][
      "eval/near_miss_accuracy"]
  table = open(os.path.join(out, "results.md")).read().splitlines()
  assert table[0].startswith("| stage | greedy pass@1 | sampled pass@1 |") and len(table) == 6
  assert open(os.path.join(out, "tango.png"), "rb").read(8) == b"\x89PNG\r\n\x1a\n"
  saved = json.load(open(os.path.join(out, "results.json")))
  again = tango.main([f"--out={out}", "--smoke"])
  assert json.loads(json.dumps(again)) == json.loads(json.dumps(results))
  assert json.load(open(os.path.join(out, "results.json")))["wall_s"] == saved["wall_s"]
