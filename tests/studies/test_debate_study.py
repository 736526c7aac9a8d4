"""The debate study end to end at smoke size: its default arms, the table by stage, the PNG,
and a rerun that reads finished arms back."""
import json
import os

import pytest

from rlalign.studies import debate

pytestmark = pytest.mark.slow


def test_study_runs_its_arms_tables_their_stages_and_resumes(tmp_path, monkeypatch):
  monkeypatch.setenv("XLA_FLAGS", "")  # the arms' processes run on one CPU device
  out = str(tmp_path / "study")
  results = debate.main([f"--out={out}", "--smoke"])
  assert set(results) == {"multiagent", "single", "majority"}
  stages = ["R0 (before fine-tuning)", "R1 (after round_1)", "R2 (after round_2)",
            "R3 (after round_3)"]
  for arm, res in results.items():
    assert list(res["stages"]) == stages
    for stage in stages:
      for key in ("eval/debate_accuracy", "eval/round1_accuracy", "eval/answer_diversity"):
        assert 0.0 <= res["stages"][stage][key] <= 1.0, (arm, stage, key)
  # No critics, no second round: the majority arm's consensus is its first round's majority.
  for row in results["majority"]["stages"].values():
    assert row["eval/debate_accuracy"] == row["eval/round1_majority"]
    assert "eval/round2_accuracy" not in row
  table = open(os.path.join(out, "results.md")).read().splitlines()
  assert table[0].startswith("| arm | model | debate (consensus) |") and len(table) == 2 + 3 * 4
  assert open(os.path.join(out, "debate.png"), "rb").read(8) == b"\x89PNG\r\n\x1a\n"
  saved = json.load(open(os.path.join(out, "results.json")))
  again = debate.main([f"--out={out}", "--smoke"])
  assert json.loads(json.dumps(again)) == json.loads(json.dumps(results))
  assert json.load(open(os.path.join(out, "results.json")))["wall_s"] == saved["wall_s"]
