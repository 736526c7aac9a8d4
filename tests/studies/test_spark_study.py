"""The SPARK study end to end at smoke size: both arms, the table, the PNG, and a rerun that
reads finished arms back."""
import json
import os

import pytest

from rlalign.studies import spark

pytestmark = pytest.mark.slow


def test_study_runs_both_arms_tables_them_and_resumes(tmp_path, monkeypatch):
  monkeypatch.setenv("XLA_FLAGS", "")  # the arms' processes run on one CPU device
  out = str(tmp_path / "study")
  results = spark.main([f"--out={out}", "--smoke"])
  assert set(results) == {"spark", "grpo"}
  for arm, res in results.items():
    for key in ("eval/pass@1_greedy", "eval/self_best_of_4", "eval/near_miss_pairwise_accuracy"):
      assert 0.0 <= res["final"][key] <= 1.0, (arm, key)
    # Both arms start from one warm start, evaluated the same way.
    assert res["warm_start"] == results["spark"]["warm_start"]
    assert res["curves"]["eval/self_pass@1"][0][0] == 0
  table = open(os.path.join(out, "results.md")).read().splitlines()
  assert table[0].startswith("| stage | greedy pass@1 | sampled pass@1 |") and len(table) == 5
  assert open(os.path.join(out, "spark.png"), "rb").read(8) == b"\x89PNG\r\n\x1a\n"
  saved = json.load(open(os.path.join(out, "results.json")))
  again = spark.main([f"--out={out}", "--smoke"])
  assert json.loads(json.dumps(again)) == json.loads(json.dumps(results))
  assert json.load(open(os.path.join(out, "results.json")))["wall_s"] == saved["wall_s"]


def test_unknown_arm_is_one_line(capsys):
  with pytest.raises(SystemExit) as e:
    spark.main(["--out=/nonexistent", "--arms=best"])
  assert e.value.code == 2 and "unknown arm(s) ['best']" in capsys.readouterr().err
