"""The RISE study end to end at smoke size: both arms, the table of turns per stage, the PNG,
and a rerun that reads finished arms back."""
import json
import os

import pytest

from rlalign.studies import rise

pytestmark = pytest.mark.slow


def test_study_runs_both_arms_tables_their_turns_and_resumes(tmp_path, monkeypatch):
  monkeypatch.setenv("XLA_FLAGS", "")  # the arms' processes run on one CPU device
  out = str(tmp_path / "study")
  results = rise.main([f"--out={out}", "--smoke"])
  assert set(results) == {"rise", "single_turn"}
  for arm, res in results.items():
    for k in (1, 2, 3):
      assert 0.0 <= res["final"][f"eval/turn{k}_accuracy"] <= 1.0, arm
    # Both arms start from one warm start and one dialogue warm start.
    assert res["stages"] == results["rise"]["stages"]
    assert set(res["stages"]) == {"warm start", "dialogue warm start"}
    assert res["curves"]["eval/turn2_accuracy"][0][0] == 0
  table = open(os.path.join(out, "results.md")).read().splitlines()
  assert table[0].startswith("| stage | turn 1 | turn 2 | turn 3 |") and len(table) == 2 + 4
  assert open(os.path.join(out, "rise.png"), "rb").read(8) == b"\x89PNG\r\n\x1a\n"
  saved = json.load(open(os.path.join(out, "results.json")))
  again = rise.main([f"--out={out}", "--smoke"])
  assert json.loads(json.dumps(again)) == json.loads(json.dumps(results))
  assert json.load(open(os.path.join(out, "results.json")))["wall_s"] == saved["wall_s"]


def test_unknown_arm_is_one_line(capsys):
  with pytest.raises(SystemExit) as e:
    rise.main(["--out=/nonexistent", "--arms=best"])
  assert e.value.code == 2 and "unknown arm(s) ['best']" in capsys.readouterr().err
