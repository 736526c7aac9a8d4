"""End to end through the CLI: artifacts, resume, and a SIGKILL at any point.

These run ``python -m rlalign.main`` in subprocesses on the ``:smoke`` config, so they also
cover flag parsing and the config file.
"""
import json
import os
import signal
import struct
import subprocess
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.configs import load_config

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SMOKE = os.path.join(REPO, "configs", "grpo_addition.py") + ":smoke"
COTRAIN_SMOKE = os.path.join(REPO, "configs", "cotrain_addition.py") + ":smoke"
EASY_TO_HARD_SMOKE = os.path.join(REPO, "configs", "easy_to_hard_addition.py") + ":cotrain,smoke"
RISE_SMOKE = os.path.join(REPO, "configs", "rise_addition.py") + ":rise,smoke"
SPARK_SMOKE = os.path.join(REPO, "configs", "spark_addition.py") + ":spark,smoke"
TANGO_SMOKE = os.path.join(REPO, "configs", "tango_addition.py") + ":tango,smoke"
SELF_REWARDING_SMOKE = os.path.join(REPO, "configs", "self_rewarding_rubric.py") + ":self,smoke"
DEBATE_SMOKE = os.path.join(REPO, "configs", "debate_addition.py") + ":multiagent,smoke"


def read_tfevents_scalars(directory):
  """Parses TensorBoard event files with their protobufs and the TFRecord framing."""
  from tensorboardX.proto import event_pb2
  scalars = {}
  for name in os.listdir(directory):
    with open(os.path.join(directory, name), "rb") as f:
      data = f.read()
    pos = 0
    while pos < len(data):
      (length,) = struct.unpack("<Q", data[pos:pos + 8])
      event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
      pos += 12 + length + 4
      for value in event.summary.value:
        scalars.setdefault(value.tag, {})[event.step] = value.simple_value
  return scalars


def test_main_writes_metrics_tensorboard_plot_and_summary(tmp_path, cli):
  workdir = str(tmp_path / "run")
  wandb = ("--config.train.wandb.enabled=True", "--config.train.wandb.mode=offline")
  proc = cli.run_main(workdir, *wandb)
  summary = json.load(open(os.path.join(workdir, "summary.json")))
  # TFDS prints its own lines first; the summary is the JSON that closes stdout.
  assert json.loads(proc.stdout[proc.stdout.rindex("\n{\n") + 1:]) == summary
  assert summary["status"] == "completed"
  assert set(summary["before_rl"]) >= {"eval/pass@1_greedy", "eval/pass@1_sampled"}
  # Each phase's policy against the phase's starting policy, prompt by prompt.
  assert 0.0 <= summary["phases"]["rl"]["eval"]["eval/rl/pass@1_win_rate_vs_start"] <= 1.0
  assert os.path.exists(os.path.join(workdir, "eval_start", "rl.json"))

  records = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  rl_records = [r for r in records if "reward" in r]
  # smoke: 4 warm-start steps then 4 RL steps logged every 2.
  assert [r["step"] for r in rl_records] == [6, 8]
  for key in ("reward", "accuracy", "kl", "entropy", "response_length", "clip_frac",
              "step_time_s", "tokens_per_s", "zero_variance_groups"):
    assert key in rl_records[-1], key
  assert 0.0 <= rl_records[-1]["accuracy"] <= 1.0
  assert rl_records[-1]["tokens_per_s"] > 0

  scalars = read_tfevents_scalars(os.path.join(workdir, "tensorboard"))
  assert scalars["reward"] == {r["step"]: pytest.approx(r["reward"]) for r in rl_records}

  with open(os.path.join(workdir, "curves.png"), "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"

  # The same metrics, the config and the summary in the offline W&B run.
  from tests.test_wandb import history, read_records, run_files
  [wandb_file] = run_files(workdir)
  logged = history(read_records(wandb_file))
  assert {s: logged[s]["reward"] for s in (6, 8)} == {
      r["step"]: pytest.approx(r["reward"]) for r in rl_records}

  # Running again on a finished workdir resumes at the end and trains no further.
  step_before, params_before = cli.final_params(workdir)
  cli.run_main(workdir, *wandb)
  step_after, params_after = cli.final_params(workdir)
  assert step_before == step_after == 4
  jax.tree.map(np.testing.assert_array_equal, params_before, params_after)


# (config, the checkpoint a kill waits for, the roles the run trains in its last phase)
RUNS = {
    "grpo": (SMOKE, "rl", ("policy",)),
    "cotrain": (COTRAIN_SMOKE, "alternating", ("generator", "verifier")),
    # The generator's reward on hard prompts is the verifier being trained beside it.
    "easy_to_hard": (EASY_TO_HARD_SMOKE, "alternating", ("generator", "verifier")),
    # Multi-turn rollouts; its dialogue warm start is a phase with a step of the recipe's own.
    "rise": (RISE_SMOKE, "rise", ("policy",)),
    # Verifier tasks built from each iteration's answers, in the same program.
    "spark": (SPARK_SMOKE, "spark", ("policy",)),
    # Two models sampling in one program, each rewarded through the other's rollouts.
    "tango": (TANGO_SMOKE, "tango", ("generator", "verifier")),
    # Rounds whose judge and sampler are a role copied from the policy as the round starts.
    "self_rewarding": (SELF_REWARDING_SMOKE, "round_3", ("policy",)),
    # Six models, each updated on its own rows of one debate, in one program.
    "debate": (DEBATE_SMOKE, "round_3", tuple(f"{part}_{n}" for part in ("agent", "critic")
                                              for n in range(3))),
}


def final_roles(cli, workdir, run):
  config, phase, roles = RUNS[run]
  return {role: cli.final_params(workdir, phase, role, config=config) for role in roles}


def assert_resumes_like_uninterrupted(cli, workdir, run, expected):
  """Reruns ``run`` in ``workdir``: every trained role ends bit-identical to ``expected`` (the
  uninterrupted run's), and no metric step is logged twice."""
  cli.run_main(workdir, config=RUNS[run][0])
  resumed = final_roles(cli, workdir, run)
  assert resumed.keys() == expected.keys()
  for role in expected:
    assert resumed[role][0] == expected[role][0] == 4
    jax.tree.map(np.testing.assert_array_equal, expected[role][1], resumed[role][1])
  steps = [json.loads(line)["step"] for line in open(os.path.join(workdir, "metrics.jsonl"))]
  assert steps == sorted(set(steps)), "a resumed run must not duplicate metric steps"


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, cli):
  out = {}
  for run, (config, _, _) in RUNS.items():
    workdir = str(tmp_path_factory.mktemp(f"uninterrupted_{run}"))
    cli.run_main(workdir, config=config)
    out[run] = final_roles(cli, workdir, run)
    out[f"{run}/workdir"] = workdir
  return out


# A kill in an offline phase (warm_start), in an RL phase, and in a two-model recipe; the
# recipe run's own warm start is the same kind of phase as grpo's, so it is not killed twice.
@pytest.mark.slow
@pytest.mark.parametrize("run, kill_when", [("grpo", "warm_start/2"), ("grpo", "rl/2"),
                                            ("cotrain", "alternating/2"),
                                            ("easy_to_hard", "alternating/2"),
                                            ("rise", "dialogue/2"), ("rise", "rise/2"),
                                            ("spark", "spark/2"), ("tango", "tango/2"),
                                            ("self_rewarding", "judge_seed/2"),
                                            ("self_rewarding", "round_2/2"),
                                            ("debate", "round_2/2")])
def test_killed_run_resumes_to_the_same_params(tmp_path, run, kill_when, uninterrupted, cli):
  """SIGKILL at a checkpoint of either phase; the resumed run ends with every trained role
  bit-identical to an uninterrupted run (two models in one checkpoint for ``cotrain``)."""
  config = RUNS[run][0]
  expected = uninterrupted[run]

  workdir = str(tmp_path / "killed")
  proc = subprocess.Popen(cli.main_cmd(workdir, config=config), stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL, env=cli.env())
  marker = os.path.join(workdir, "checkpoints", kill_when)
  deadline = time.time() + 300
  while not os.path.isdir(marker) and proc.poll() is None and time.time() < deadline:
    time.sleep(0.05)
  assert proc.poll() is None, "the run finished before it could be killed"
  os.kill(proc.pid, signal.SIGKILL)  # no chance to clean up or flush
  proc.wait()
  assert not os.path.exists(os.path.join(workdir, "summary.json"))

  assert_resumes_like_uninterrupted(cli, workdir, run, expected)


@pytest.mark.slow
@pytest.mark.parametrize("run, signum", [("grpo", signal.SIGTERM), ("grpo", signal.SIGINT),
                                         ("cotrain", signal.SIGTERM)])
def test_a_preempted_run_saves_its_step_exits_75_and_resumes_to_the_same_params(
    tmp_path, run, signum, uninterrupted, cli):
  """SIGTERM (a cluster's preemption) or SIGINT (Ctrl-C) once the warm start is saved: the
  next phase (RL, or the two-model loop) finishes the step it is in, saves it although it is
  no checkpoint step, and exits 75 with no summary; the rerun resumes from that step and ends
  with every trained role bit-identical to an uninterrupted run, each metric step logged
  once."""
  config, phase, _ = RUNS[run]
  workdir = str(tmp_path / "preempted")
  proc = subprocess.Popen(cli.main_cmd(workdir, config=config), stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True, env=cli.env())
  marker = os.path.join(workdir, "checkpoints", "warm_start", "4")
  deadline = time.time() + 300
  while not os.path.isdir(marker) and proc.poll() is None and time.time() < deadline:
    time.sleep(0.02)
  assert proc.poll() is None, "the run finished before it could be preempted"
  os.kill(proc.pid, signum)
  _, stderr = proc.communicate(timeout=300)
  assert proc.returncode == 75, stderr[-3000:]
  assert "preempted" in stderr and "run the same command again to resume" in stderr
  assert "Traceback" not in stderr
  assert not os.path.exists(os.path.join(workdir, "summary.json"))
  saved = sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints", phase))
                 if d.isdigit())
  assert saved and saved[-1] in (1, 2, 3), saved  # the step it was in, not the last one

  assert_resumes_like_uninterrupted(cli, workdir, run, uninterrupted[run])
  with open(os.path.join(workdir, "summary.json")) as f:
    assert json.load(f)["status"] == "completed"


@pytest.mark.slow
def test_resuming_with_a_changed_config(tmp_path, uninterrupted, cli):
  """On a finished run: a changed learning rate or a longer warm start (RL has finished on
  the old one) is refused with exit 2 and one line naming the key, and nothing in the workdir
  changes; more RL steps are accepted, recorded, and train only the new steps; a forced
  change is recorded as forced."""
  import shutil
  workdir = str(tmp_path / "run")
  shutil.copytree(uninterrupted["grpo/workdir"], workdir)
  stored = open(os.path.join(workdir, "config.json")).read()
  metrics = open(os.path.join(workdir, "metrics.jsonl")).read()
  for override, key in [("--config.roles.policy.optimizer.learning_rate=0.001",
                         "roles.policy.optimizer.learning_rate: 0.0005 -> 0.001"),
                        ("--config.phases.warm_start.steps=6", "phases.warm_start.steps: 4 -> 6")]:
    proc = cli.run_main(workdir, override, check=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and key in last and "Traceback" not in proc.stderr
    assert open(os.path.join(workdir, "config.json")).read() == stored
    assert open(os.path.join(workdir, "metrics.jsonl")).read() == metrics

  cli.run_main(workdir, "--config.phases.rl.steps=6")
  steps = [json.loads(line)["step"] for line in open(os.path.join(workdir, "metrics.jsonl"))]
  assert steps == sorted(set(steps)) and steps[-1] == 10  # 4 warm-start + 6 RL steps
  assert cli.final_params(workdir)[0] == 6
  cli.run_main(workdir, "--config.phases.rl.steps=6", "--config.seed=1",
               "--config.train.allow_config_change=True")
  changes = [json.loads(l) for l in open(os.path.join(workdir, "config_changes.jsonl"))]
  moved = [os.path.join(uninterrupted["grpo/workdir"], "tfds"), os.path.join(workdir, "tfds")]
  assert [c["changes"] for c in changes] == [
      {"data.data_dir": moved, "phases.rl.steps": [4, 6]},
      {"seed": [0, 1], "train.allow_config_change": [False, True]}]
  assert [c["forced"] for c in changes] == [[], ["seed"]]
  assert [c["step"] for c in changes] == [8, 10]


@pytest.mark.slow
def test_the_two_model_recipe_checks_its_config_on_resume(tmp_path, uninterrupted, cli):
  """The same check on the two-model recipe: a new seed is refused with the key named and
  the stored config untouched; a new log cadence is accepted and recorded."""
  import shutil
  workdir = str(tmp_path / "run")
  shutil.copytree(uninterrupted["cotrain/workdir"], workdir)
  stored = open(os.path.join(workdir, "config.json")).read()
  proc = cli.run_main(workdir, "--config.seed=1", config=COTRAIN_SMOKE, check=False)
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert "seed: 0 -> 1" in proc.stderr.strip().splitlines()[-1]
  assert open(os.path.join(workdir, "config.json")).read() == stored
  cli.run_main(workdir, "--config.train.log_every=1", config=COTRAIN_SMOKE)
  [change] = [json.loads(l) for l in open(os.path.join(workdir, "config_changes.jsonl"))]
  assert change["changes"]["train.log_every"] == [2, 1] and change["forced"] == []


@pytest.mark.slow
@pytest.mark.parametrize("run", ["grpo", "cotrain"])
def test_a_damaged_newest_checkpoint_resumes_from_the_one_before(tmp_path, run, uninterrupted,
                                                                  cli):
  """A finished run whose last checkpoint of its last phase lost its array data (a full
  disk, say): the rerun warns naming it, moves it aside, resumes from step 2 and ends with
  every trained role bit-identical to the uninterrupted run, with each metric step once
  (for the two-model recipe, both models from one checkpoint)."""
  import shutil
  config, phase, _ = RUNS[run]
  workdir = str(tmp_path / "run")
  shutil.copytree(uninterrupted[f"{run}/workdir"], workdir)
  newest = os.path.join(workdir, "checkpoints", phase, "4")
  for d, _, files in os.walk(os.path.join(newest, "state")):
    if os.path.basename(d) == "d":
      for f in files:
        with open(os.path.join(d, f), "r+b") as fh:
          fh.truncate(os.path.getsize(os.path.join(d, f)) // 2)
  proc = cli.run_main(workdir, config=config)
  assert f"warning: checkpoint {newest} is unreadable" in proc.stdout
  assert "resuming from step 2" in proc.stdout
  assert os.path.isdir(newest + ".unreadable")
  resumed, expected = final_roles(cli, workdir, run), uninterrupted[run]
  assert resumed.keys() == expected.keys()
  for role in expected:
    assert resumed[role][0] == 4
    jax.tree.map(np.testing.assert_array_equal, expected[role][1], resumed[role][1])
  steps = [json.loads(line)["step"] for line in open(os.path.join(workdir, "metrics.jsonl"))]
  assert steps == sorted(set(steps)) and steps[-1] == 8


DIVERGED_CONFIG = """
from tests.configs import load_config

def get_config(arg=""):
  c = load_config({name!r}, "smoke")
  c.roles.{role}.weights = dict(source="checkpoint", path={path!r}, role={role!r})
  return c
"""


@pytest.mark.slow
@pytest.mark.parametrize("run, max_skips", [("grpo", 2), ("grpo", 0), ("cotrain", 2)])
def test_a_diverged_run_stops_without_saving_nan_and_says_so(tmp_path, cli, run, max_skips):
  """The policy (for the two-model recipe: the generator, which the verifier copies) starts
  from a checkpoint holding NaN: every update is non-finite. With
  train.max_consecutive_skips=2 the second skipped step stops the run; with 0 (never stop)
  the first save refuses the NaN params. Either way: exit 1 with a one-line reason, no
  checkpoint of the phase, and summary.json says the run failed. The two-model run skips
  its warm start (0 steps) so the divergence is in the two-model loop itself."""
  from rlalign import checkpoint as ckpt_lib
  from rlalign import config as config_lib
  from rlalign.models import transformer as tfm
  name, role, phase, title = {"grpo": ("grpo_addition", "policy", "warm_start", "warm start"),
                              "cotrain": ("cotrain_addition", "generator", "alternating",
                                          "alternating")}[run]
  config = load_config(name, "smoke")
  config.data.data_dir = str(tmp_path / "tfds")
  cfg = config_lib.from_config_dict(config)
  params = tfm.init(cfg.role_model(role), jax.random.key(0))
  params["embed"] = params["embed"].at[:, 0].set(jnp.nan)
  source = str(tmp_path / "poisoned")
  ckpt = ckpt_lib.Checkpointer(source, save_every=1)
  ckpt.save(1, {"roles": {role: {"params": params}}}, {}, force=True)
  ckpt.wait_until_finished()
  config_file = tmp_path / "diverged.py"
  config_file.write_text(DIVERGED_CONFIG.format(name=name, role=role, path=source))

  workdir = str(tmp_path / "run")
  extra = ("--config.phases.warm_start.steps=0",) if run == "cotrain" else ()
  proc = cli.run_main(workdir, f"--config.train.max_consecutive_skips={max_skips}", *extra,
                      config=str(config_file), check=False)
  assert proc.returncode == 1, proc.stderr[-3000:]
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith(f"diverged: phase {title!r}"), last
  if max_skips:
    assert "steps 1..2 each skipped an update" in last
  else:
    assert "not saving a checkpoint with non-finite values" in last
  assert "Traceback" not in proc.stderr
  assert not [d for d in os.listdir(os.path.join(workdir, "checkpoints", phase))
              if d.isdigit()]
  with open(os.path.join(workdir, "summary.json")) as f:
    summary = json.load(f)
  assert summary["status"] == "failed" and summary["error"] == last[len("diverged: "):]
  records = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  skipped = [v for r in records for k, v in r.items() if k.endswith("skipped_updates")]
  assert skipped and all(s >= 1 for s in skipped)


@pytest.mark.slow
def test_a_role_starts_from_an_earlier_runs_checkpoint(tmp_path, uninterrupted):
  """weights.source="checkpoint": the two-model run's verifier as a new run's reward model."""
  from rlalign import config as config_lib
  from rlalign.rl.runtime import Runtime
  config = load_config("grpo_addition", "smoke")  # SMOKE's config
  earlier = os.path.join(uninterrupted["cotrain/workdir"], "checkpoints", "alternating")
  config.roles.reward_model = dict(
      heads=("scalar",), trainable=False,
      weights=dict(source="checkpoint", path=earlier, role="verifier"))
  config.data.data_dir = str(tmp_path / "tfds")
  config.phases.rl.batch_size = 32  # 8 prompts: they divide over this process's 8 devices
  runtime = Runtime(config_lib.from_config_dict(config), str(tmp_path / "run"), [("rl", 1)])
  step, expected = uninterrupted["cotrain"]["verifier"]
  jax.tree.map(np.testing.assert_array_equal, expected,
               jax.device_get(runtime.weights("reward_model")))
