"""The Self-Rewarding study end to end at smoke size: every arm, the table by stage, the PNG,
and a rerun that reads finished arms back."""
import json
import os

import pytest

from rlalign.studies import self_rewarding

pytestmark = pytest.mark.slow


def test_study_runs_every_arm_tables_its_stages_and_resumes(tmp_path, monkeypatch):
  monkeypatch.setenv("XLA_FLAGS", "")  # the arms' processes run on one CPU device
  out = str(tmp_path / "study")
  results = self_rewarding.main([f"--out={out}", "--smoke"])
  assert set(results) == {"self", "meta", "frozen", "gold"}
  stages = ["M0 (warm start)", "M1 (judge seed)", "M2 (after round_1)", "M3 (after round_2)",
            "M4 (after round_3)"]
  for arm, res in results.items():
    assert list(res["stages"]) == stages
    for stage in stages[1:]:
      for key in ("eval/points_greedy", "eval/judge_exact", "eval/judge_pairwise"):
        assert 0.0 <= res["stages"][stage][key] <= 1.0, (arm, stage, key)
    # The arms differ only from round 1 on: one warm start and one seed.
    assert res["stages"][stages[1]] == results["self"]["stages"][stages[1]]
  table = open(os.path.join(out, "results.md")).read().splitlines()
  assert table[0].startswith("| arm | model | greedy points |") and len(table) == 2 + 4 * 5
  assert open(os.path.join(out, "self_rewarding.png"), "rb").read(8) == b"\x89PNG\r\n\x1a\n"
  saved = json.load(open(os.path.join(out, "results.json")))
  again = self_rewarding.main([f"--out={out}", "--smoke"])
  assert json.loads(json.dumps(again)) == json.loads(json.dumps(results))
  assert json.load(open(os.path.join(out, "results.json")))["wall_s"] == saved["wall_s"]
