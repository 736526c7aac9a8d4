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
import numpy as np
import pytest

from tests.configs import load_config

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SMOKE = os.path.join(REPO, "configs", "grpo_addition.py") + ":smoke"
COTRAIN_SMOKE = os.path.join(REPO, "configs", "cotrain_addition.py") + ":smoke"
pytestmark = pytest.mark.slow


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
  proc = cli.run_main(workdir)
  summary = json.load(open(os.path.join(workdir, "summary.json")))
  # TFDS prints its own lines first; the summary is the JSON that closes stdout.
  assert json.loads(proc.stdout[proc.stdout.rindex("\n{\n") + 1:]) == summary
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

  # Running again on a finished workdir resumes at the end and trains no further.
  step_before, params_before = cli.final_params(workdir)
  cli.run_main(workdir)
  step_after, params_after = cli.final_params(workdir)
  assert step_before == step_after == 4
  jax.tree.map(np.testing.assert_array_equal, params_before, params_after)


# (config, the checkpoint a kill waits for, the roles the run trains in its last phase)
RUNS = {
    "grpo": (SMOKE, "rl", ("policy",)),
    "cotrain": (COTRAIN_SMOKE, "alternating", ("generator", "verifier")),
}


def final_roles(cli, workdir, run):
  config, phase, roles = RUNS[run]
  return {role: cli.final_params(workdir, phase, role, config=config) for role in roles}


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
@pytest.mark.parametrize("run, kill_when", [("grpo", "warm_start/2"), ("grpo", "rl/2"),
                                            ("cotrain", "alternating/2")])
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

  cli.run_main(workdir, config=config)
  resumed = final_roles(cli, workdir, run)
  assert resumed.keys() == expected.keys()
  for role in expected:
    assert resumed[role][0] == expected[role][0] == 4
    jax.tree.map(np.testing.assert_array_equal, expected[role][1], resumed[role][1])
  steps = [json.loads(line)["step"] for line in open(os.path.join(workdir, "metrics.jsonl"))]
  assert steps == sorted(set(steps)), "a resumed run must not duplicate metric steps"


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
