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
