"""End to end through the CLI: artifacts, resume, and a SIGKILL at any point.

These run ``python -m rlalign.main`` in subprocesses on the ``:smoke`` config, so they also
cover flag parsing and the config file.
"""
import json
import os
import signal
import struct
import subprocess
import sys
import time

import importlib.util

import jax
import numpy as np
import pytest

from rlalign import checkpoint as ckpt_lib
from rlalign import config as config_lib
from rlalign.models import transformer as tfm
from rlalign.rl import state as state_lib

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(REPO, "configs", "grpo_addition.py")
pytestmark = pytest.mark.slow


# The CLI runs here are single-device; tests/conftest.py's 8 fake devices stay in-process.
ENV = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}


def main_cmd(workdir, *overrides):
  return [sys.executable, "-m", "rlalign.main", f"--config={CONFIG}:smoke",
          f"--workdir={workdir}", *overrides]


def run_main(workdir, *overrides, check=True):
  proc = subprocess.run(main_cmd(workdir, *overrides), cwd=REPO, capture_output=True, text=True,
                        timeout=600, env=ENV)
  if check and proc.returncode != 0:
    raise AssertionError(f"rlalign.main failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
  return proc


def final_params(workdir):
  """The RL phase's last checkpointed params, read back through orbax."""
  spec = importlib.util.spec_from_file_location("smoke_config", CONFIG)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config("smoke")
  config.data.data_dir = os.path.join(workdir, "tfds")
  cfg = config_lib.from_config_dict(config)
  ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints", "rl"), save_every=1)
  step = ckpt.latest_step()
  params = tfm.abstract_params(cfg.model)
  optimizer = state_lib.make_optimizer(cfg.optimizer)
  target = {"step": jax.ShapeDtypeStruct((), np.int32), "params": params,
            "opt_state": jax.eval_shape(optimizer.init, params),
            "rng": jax.eval_shape(lambda: jax.random.key_data(jax.random.key(0)))}
  state, _ = ckpt.restore(target, step)
  return step, state["params"]


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


def test_main_writes_metrics_tensorboard_plot_and_summary(tmp_path):
  workdir = str(tmp_path / "run")
  proc = run_main(workdir)
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
  step_before, params_before = final_params(workdir)
  run_main(workdir)
  step_after, params_after = final_params(workdir)
  assert step_before == step_after == 4
  jax.tree.map(np.testing.assert_array_equal, params_before, params_after)


@pytest.fixture(scope="module")
def uninterrupted_params(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("uninterrupted"))
  run_main(workdir)
  return final_params(workdir)[1]


@pytest.mark.parametrize("kill_when", ["warm_start/2", "rl/2"])
def test_killed_run_resumes_to_the_same_params(tmp_path, kill_when, uninterrupted_params):
  expected = uninterrupted_params

  workdir = str(tmp_path / "killed")
  proc = subprocess.Popen(main_cmd(workdir), cwd=REPO, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL, env=ENV)
  marker = os.path.join(workdir, "checkpoints", kill_when)
  deadline = time.time() + 300
  while not os.path.isdir(marker) and proc.poll() is None and time.time() < deadline:
    time.sleep(0.05)
  assert proc.poll() is None, "the run finished before it could be killed"
  os.kill(proc.pid, signal.SIGKILL)  # no chance to clean up or flush
  proc.wait()
  assert not os.path.exists(os.path.join(workdir, "summary.json"))

  run_main(workdir)
  _, resumed = final_params(workdir)
  jax.tree.map(np.testing.assert_array_equal, expected, resumed)
  steps = [json.loads(line)["step"] for line in open(os.path.join(workdir, "metrics.jsonl"))]
  assert steps == sorted(set(steps)), "a resumed run must not duplicate metric steps"
