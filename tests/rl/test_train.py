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
  assert set(summary["before_rl"]) == {"eval/pass@1_greedy", "eval/pass@1_sampled"}

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


@pytest.fixture(scope="module")
def uninterrupted_params(tmp_path_factory, cli):
  workdir = str(tmp_path_factory.mktemp("uninterrupted"))
  cli.run_main(workdir)
  return cli.final_params(workdir)[1]


@pytest.mark.parametrize("kill_when", ["warm_start/2", "rl/2"])
def test_killed_run_resumes_to_the_same_params(tmp_path, kill_when, uninterrupted_params, cli):
  expected = uninterrupted_params

  workdir = str(tmp_path / "killed")
  proc = subprocess.Popen(cli.main_cmd(workdir), stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL, env=cli.env())
  marker = os.path.join(workdir, "checkpoints", kill_when)
  deadline = time.time() + 300
  while not os.path.isdir(marker) and proc.poll() is None and time.time() < deadline:
    time.sleep(0.05)
  assert proc.poll() is None, "the run finished before it could be killed"
  os.kill(proc.pid, signal.SIGKILL)  # no chance to clean up or flush
  proc.wait()
  assert not os.path.exists(os.path.join(workdir, "summary.json"))

  cli.run_main(workdir)
  _, resumed = cli.final_params(workdir)
  jax.tree.map(np.testing.assert_array_equal, expected, resumed)
  steps = [json.loads(line)["step"] for line in open(os.path.join(workdir, "metrics.jsonl"))]
  assert steps == sorted(set(steps)), "a resumed run must not duplicate metric steps"
