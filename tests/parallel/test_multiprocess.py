"""Two processes joined by jax.distributed (CPU, gloo) train exactly like one.

The single-process reference drives 2 fake CPU devices; the two-process run drives 1 device
in each process, launched through launch/local_multiprocess.sh. Both see the same (2, 1, 1)
mesh, so the programs and the data layout are the same; only the transport differs.
"""
import jax
import numpy as np
import pytest

pytestmark = pytest.mark.slow


def assert_same_params(a, b):
  # Cross-process all-reduces may sum in another order than in-process ones.
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7), a, b)


@pytest.fixture(scope="module")
def single_process(tmp_path_factory, cli):
  workdir = str(tmp_path_factory.mktemp("single"))
  cli.run_main(workdir, devices=2)
  return cli.final_params(workdir)


def test_two_processes_train_like_one(tmp_path, cli, single_process):
  workdir = str(tmp_path / "two")
  proc = cli.run_multiprocess(2, workdir)
  assert "process(es)" in proc.stdout and "in 2 process(es)" in proc.stdout
  step, params = cli.final_params(workdir)
  assert step == single_process[0] == 4
  assert_same_params(params, single_process[1])


def test_checkpoints_move_between_process_counts(tmp_path, cli, single_process):
  """RL steps 1-2 on two processes, 3 on one, 4 on two again: the same params as one run."""
  workdir = str(tmp_path / "run")
  cli.run_multiprocess(2, workdir, "--config.phases.rl.steps=2")
  assert cli.final_params(workdir)[0] == 2
  cli.run_main(workdir, "--config.phases.rl.steps=3", devices=2)  # saved by 2, restored on 1
  assert cli.final_params(workdir)[0] == 3
  cli.run_multiprocess(2, workdir, "--config.phases.rl.steps=4")  # saved by 1, restored on 2
  step, params = cli.final_params(workdir)
  assert step == 4
  assert_same_params(params, single_process[1])


def _child_pid(workdir, process_id, timeout=120):
  """The pid of the rlalign.main process ``process_id`` the launcher started for workdir."""
  import os
  import time
  wanted = [f"--workdir={workdir}", f"--process_id={process_id}"]
  deadline = time.time() + timeout
  while time.time() < deadline:
    for pid in filter(str.isdigit, os.listdir("/proc")):
      try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
          args = f.read().decode(errors="replace").split("\0")
      except OSError:
        continue
      if "rlalign.main" in args and all(w in args for w in wanted):
        return int(pid)
    time.sleep(0.1)
  raise AssertionError(f"no process {process_id} for {workdir}")


def _launch(cli, workdir):
  import subprocess
  import sys
  from tests.conftest import REPO, SMOKE
  import os
  return subprocess.Popen(
      [os.path.join(REPO, "launch", "local_multiprocess.sh"), "2", SMOKE, workdir],
      cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
      env={**cli.env(), "PYTHON": sys.executable})


def _wait_for(path, proc, timeout=300):
  import os
  import time
  deadline = time.time() + timeout
  while not os.path.isdir(path) and proc.poll() is None and time.time() < deadline:
    time.sleep(0.02)
  assert proc.poll() is None, f"the run ended before {path} appeared"


def test_a_signal_to_one_process_stops_every_process_at_the_same_step(tmp_path, cli,
                                                                       single_process):
  """SIGTERM reaches process 1 only (a preemption notice on one host): both processes stop
  after the same step, save it together and exit 75, and so does the launcher; two processes
  then resume to the params of one uninterrupted process."""
  import os
  import signal
  workdir = str(tmp_path / "run")
  proc = _launch(cli, workdir)
  _wait_for(os.path.join(workdir, "checkpoints", "warm_start", "4"), proc)
  os.kill(_child_pid(workdir, 1), signal.SIGTERM)
  _, stderr = proc.communicate(timeout=300)
  assert proc.returncode == 75, stderr[-3000:]
  for i in (0, 1):
    log = open(os.path.join(workdir, "logs", f"process_{i}.stderr")).read()
    assert "preempted: stopped by SIGTERM after step" in log, log[-2000:]
  saved = [d for d in os.listdir(os.path.join(workdir, "checkpoints", "rl")) if d.isdigit()]
  assert len(saved) == 1 and int(saved[0]) < 4, saved
  cli.run_multiprocess(2, workdir)
  step, params = cli.final_params(workdir)
  assert step == 4
  assert_same_params(params, single_process[1])


def test_a_process_that_dies_stops_the_others_with_its_error(tmp_path, cli):
  """SIGKILL to process 1 mid-run: the launcher stops process 0 instead of leaving it in a
  collective, names the dead process and its exit code, and ends in bounded time."""
  import os
  import signal
  import time
  workdir = str(tmp_path / "run")
  proc = _launch(cli, workdir)
  _wait_for(os.path.join(workdir, "checkpoints", "warm_start", "2"), proc)
  os.kill(_child_pid(workdir, 1), signal.SIGKILL)
  start = time.time()
  _, stderr = proc.communicate(timeout=120)
  assert time.time() - start < 60
  assert proc.returncode == 137, stderr[-3000:]
  assert "process 1 exited with code 137; stopping the others" in stderr
