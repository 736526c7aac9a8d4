"""The easy-to-hard study end to end at smoke size: every arm's run, the table, the PNG, and a
rerun that reads finished arms back instead of training them again."""
import json
import os

import pytest

from rlalign.studies import easy_to_hard

pytestmark = pytest.mark.slow


def test_study_runs_arms_tables_them_and_resumes(tmp_path, monkeypatch):
  monkeypatch.setenv("XLA_FLAGS", "")  # the arms' processes run on one CPU device
  out = str(tmp_path / "study")
  results = easy_to_hard.main([f"--out={out}", "--smoke", "--arms=easy_only,cotrain"])
  assert set(results) == {"easy_only", "cotrain"}
  for arm, res in results.items():
    assert "eval/test_hard/pass@1_greedy" in res["final"], arm
    assert res["warm_start"] == results["easy_only"]["warm_start"]  # one shared warm start
    assert res["curves"]["eval/test_hard/pass@1_greedy"][0][0] == 0
  arms_table, lengths_table = open(os.path.join(out, "results.md")).read().split("\n\n")
  table = arms_table.splitlines()
  assert table[0].startswith("| arm | hard pass@1 greedy") and len(table) == 2 + 1 + 2
  # By answer length, recomputed from the final checkpoints: it must average back to the
  # evaluator's figure (the same greedy decoding of the same split).
  for arm, res in results.items():
    split = res["hard_greedy_by_answer_length"]
    mean = sum(split[k] * split[k + ", share"] for k in split if not k.endswith("share"))
    assert abs(mean - res["final"]["eval/test_hard/pass@1_greedy"]) < 1e-6, arm
  assert lengths_table.splitlines()[2].startswith("| warm start |")
  assert open(os.path.join(out, "easy_to_hard.png"), "rb").read(8) == b"\x89PNG\r\n\x1a\n"
  saved = json.load(open(os.path.join(out, "results.json")))
  assert all(wall > 0 for wall in saved["wall_s"].values())
  again = easy_to_hard.main([f"--out={out}", "--smoke", "--arms=easy_only,cotrain"])
  assert json.loads(json.dumps(again)) == json.loads(json.dumps(results))
  assert json.load(open(os.path.join(out, "results.json")))["wall_s"] == saved["wall_s"]


def test_unknown_arm_is_one_line(capsys):
  with pytest.raises(SystemExit) as e:
    easy_to_hard.main(["--out=/nonexistent", "--arms=best"])
  assert e.value.code == 2 and "unknown arm(s) ['best']" in capsys.readouterr().err
