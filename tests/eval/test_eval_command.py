"""``python -m rlalign.eval`` on a real tiny run: its figures agree with its own per-prompt
scores, the host twin of exact_match agrees with it, the same weights in Hugging Face format
score the same, and bad input is one line with exit code 2.

The run is the smoke config's warm start alone, trained long enough (on correct
demonstrations of two-digit sums) that some completions are right, so pass@k is not 0 = 0.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from rlalign.eval import checkpoint_eval

pytestmark = pytest.mark.slow
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PHASE = "warm_start"
TRAIN = ("--config.recipe.order=('warm_start',)", "--config.data.max_digits=2",
         "--config.data.carry_drop=0.0", "--config.phases.warm_start.steps=200",
         "--config.phases.warm_start.batch_size=128",
         "--config.phases.warm_start.optimizer.warmup_steps=10",
         "--config.phases.warm_start.optimizer.learning_rate=0.01",
         "--config.train.checkpoint_every=1000", "--config.train.eval_every=1000")
JUDGES = "exact_match,answer_digits,exact_match_text"
SAMPLES, PROMPTS = 4, 40  # 40 prompts: a full batch of 32, then a padded one


def eval_cmd(*args):
  return [sys.executable, "-m", "rlalign.eval", *args]


@pytest.fixture(scope="module")
def run_dir(cli, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("eval_run"))
  cli.run_main(workdir, *TRAIN)
  return workdir


@pytest.fixture(scope="module")
def evaluated(cli, run_dir, tmp_path_factory):
  out = str(tmp_path_factory.mktemp("eval_out"))
  proc = cli.run(eval_cmd(f"--run={run_dir}", f"--phase={PHASE}", f"--judges={JUDGES}",
                          f"--samples={SAMPLES}", f"--max_prompts={PROMPTS}", "--host_workers=1",
                          f"--out={out}"),
                 cli.env())
  with open(os.path.join(out, "eval.json")) as f:
    return out, json.load(f), proc


def hand_pass_at_k(correct: np.ndarray, k: int) -> float:
  n = correct.shape[1]
  return float(np.mean([1 - math.comb(n - c, k) / math.comb(n, k) for c in correct.sum(1)]))


def test_report_agrees_with_its_per_prompt_scores(evaluated):
  out, report, proc = evaluated
  assert set(report) >= {"source", "settings", "judges", "completions", "host_failures",
                         "per_prompt", "examples"}
  assert report["source"]["phase"] == PHASE and report["source"]["step"] == 200
  assert report["settings"]["prompts"] == PROMPTS and report["settings"]["samples"] == SAMPLES
  assert set(report["judges"]) == set(JUDGES.split(","))
  assert report["host_failures"] == {}
  greedy = {k: np.array(v) for k, v in report["per_prompt"]["greedy"].items()}
  sampled = {k: np.array(v) for k, v in report["per_prompt"]["sampled"].items()}
  for key, judge in report["judges"].items():
    assert greedy[key].shape == (PROMPTS,) and sampled[key].shape == (PROMPTS, SAMPLES)
    assert 0.0 <= judge["greedy"] <= 1.0 and 0.0 <= judge["sampled"] <= 1.0
    assert judge["greedy"] == pytest.approx(greedy[key].mean())
    assert judge["sampled"] == pytest.approx(sampled[key].mean())
  assert report["judges"]["exact_match_text"]["kind"] == "host"
  assert report["judges"]["answer_digits"]["pass_at_k"] is None  # graded, not 0/1

  exact = report["judges"]["exact_match"]
  assert exact["binary"] and set(exact["pass_at_k"]) == {"pass@1", "pass@2", "pass@4"}
  assert 0 < exact["sampled"] < 1  # the run learned some sums, not all
  assert exact["pass_at_k"]["pass@1"] == pytest.approx(sampled["exact_match"].mean())
  for k in (2, 4):
    assert exact["pass_at_k"][f"pass@{k}"] == pytest.approx(
        hand_pass_at_k(sampled["exact_match"] > 0.5, k))
  values = list(exact["pass_at_k"].values())
  assert values == sorted(values)
  # The host twin on decoded text scores every completion as the in-graph verifier does.
  np.testing.assert_array_equal(greedy["exact_match_text"], greedy["exact_match"])
  np.testing.assert_array_equal(sampled["exact_match_text"], sampled["exact_match"])
  # Partial credit is 1 exactly where the exact match is.
  np.testing.assert_array_equal(sampled["answer_digits"] == 1, sampled["exact_match"] == 1)

  c = report["completions"]
  max_new = report["settings"]["max_new_tokens"]
  for key in ("greedy_length", "sampled_length"):
    assert 1 <= c[key] <= max_new
  for key in ("greedy_stopped", "sampled_stopped", "distinct_1", "distinct_2", "self_bleu"):
    assert 0.0 <= c[key] <= 1.0, key
  assert c["distinct_1"] <= c["distinct_2"]  # within a prompt, bigrams repeat less than tokens
  example = report["examples"][0]
  assert len(example["samples"]) == SAMPLES and example["answer"]
  assert os.path.getsize(os.path.join(out, "eval.png")) > 1000
  assert "exact_match" in proc.stdout and "wrote" in proc.stdout


def test_hf_export_of_the_same_weights_scores_the_same(cli, run_dir, evaluated, tmp_path):
  from rlalign import config as config_lib
  from rlalign.models import hf
  step, params = cli.final_params(run_dir, phase=PHASE)
  assert step == 200
  with open(os.path.join(run_dir, "config.json")) as f:
    model = config_lib.from_config_dict(json.load(f)).role_model("policy")
  hf_dir = hf.save_hf_checkpoint(params, model, str(tmp_path / "hf"), family="llama")
  report = checkpoint_eval.evaluate(checkpoint_eval.EvalSettings(
      run=run_dir, hf_dir=hf_dir, judges="exact_match,answer_digits", samples=2,
      max_prompts=PROMPTS), str(tmp_path / "out"))
  assert report["source"]["hf_dir"] == hf_dir and "checkpoint" not in report["source"]
  orbax = evaluated[1]
  for key in ("exact_match", "answer_digits"):
    assert report["per_prompt"]["greedy"][key] == orbax["per_prompt"]["greedy"][key]
  assert report["completions"]["greedy_length"] == orbax["completions"]["greedy_length"]


@pytest.fixture(scope="module")
def fake_run(tmp_path_factory):
  """A workdir without training: the smoke config's config.json, and phase checkpoints of
  a stand-in state (step 2 of warm_start; an rl directory with no finished step)."""
  import importlib.util
  from rlalign import checkpoint as ckpt_lib
  from rlalign import config as config_lib
  workdir = tmp_path_factory.mktemp("fake_run")
  spec = importlib.util.spec_from_file_location(
      "smoke", os.path.join(REPO, "configs", "grpo_addition.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config("smoke")
  config.data.data_dir = str(workdir / "tfds")
  cfg = config_lib.from_config_dict(config)
  (workdir / "config.json").write_text(json.dumps(config_lib.to_dict(cfg)))
  with ckpt_lib.Checkpointer(str(workdir / "checkpoints" / PHASE), save_every=1) as ckpt:
    ckpt.save(2, {"step": np.int32(2)}, {})
  (workdir / "checkpoints" / "rl").mkdir()
  return str(workdir)


@pytest.mark.parametrize("args, names", [
    (["--run={empty}"], "config.json"),
    (["--run={run}", "--phase=dpo"], "checkpoints/dpo"),
    (["--run={run}", "--phase=rl"], "no finished checkpoint"),
    (["--run={run}", f"--phase={PHASE}", "--step=7"], "step 7"),
    (["--run={run}", "--judges=exact_match,no_such_judge"], "no_such_judge"),
    (["--run={run}", '--judges={"rm": {"name": "reward_model", "role": "no_such_role"}}'],
     "'no_such_role'"),
    (["--run={run}", "--role=critic"], "'critic'"),
    (["--config=configs/grpo_addition.py:smoke"], "--hf_dir"),
])
def test_bad_input_is_one_line_and_exit_2(fake_run, tmp_path, capsys, args, names):
  empty = tmp_path / "empty"
  empty.mkdir()
  argv = [a.replace("{run}", fake_run).replace("{empty}", str(empty)) for a in args]
  argv.append(f"--out={tmp_path / 'out'}")
  assert checkpoint_eval.main(argv) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("error: ") and names in err[0], err
  assert not os.path.exists(tmp_path / "out")


def test_reading_a_live_run_leaves_its_unfinished_save_alone(fake_run, tmp_path, capsys):
  """A save in progress is a tmp directory, which a writing Checkpointer would delete."""
  unfinished = os.path.join(fake_run, "checkpoints", PHASE, "4.orbax-checkpoint-tmp-1")
  os.makedirs(unfinished)
  assert checkpoint_eval.main([f"--run={fake_run}", f"--phase={PHASE}", "--step=4",
                               f"--out={tmp_path}"]) == 2
  assert "its steps: [2]" in capsys.readouterr().err
  assert os.path.isdir(unfinished)


def test_missing_workdir_from_the_command_line(cli, tmp_path):
  missing = str(tmp_path / "no_such_run")
  proc = subprocess.run(eval_cmd(f"--run={missing}", f"--out={tmp_path / 'out'}"), cwd=REPO,
                        capture_output=True, text=True, timeout=120, env=cli.env())
  assert proc.returncode == 2
  assert proc.stderr.strip() == f"error: --run: no run directory {missing}"
