"""Eight fake CPU devices for the whole suite, so mesh tests run beside the rest, and a
cheaper CPU backend compile.

XLA reads the flags once, when jax first initialises a backend, so they must be set here,
before any test module imports jax. The suite's models are tiny, so compiling dominates it;
skipping LLVM's expensive optimisation passes cuts a compile-bound test's time by about a
third (measured on 2 cores), and every comparison in the suite is between programs compiled
the same way or against tolerances. Benchmarks and real runs keep XLA's defaults.
"""
import os

_FLAG = "--xla_force_host_platform_device_count=8"
FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
if _FLAG not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _FLAG).strip()
if "xla_backend_optimization_level" not in os.environ["XLA_FLAGS"]:
  os.environ["XLA_FLAGS"] += " " + FAST_COMPILE


import importlib.util  # noqa: E402  (after XLA_FLAGS on purpose)
import subprocess  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = os.path.join(REPO, "configs", "grpo_addition.py") + ":smoke"
COTRAIN_SMOKE = os.path.join(REPO, "configs", "cotrain_addition.py") + ":smoke"


class Cli:
  """Runs ``python -m rlalign.main`` on the smoke config and reads its checkpoints back.

  The runs share a persistent compilation cache: they compile the same few programs, and
  compiling dominates a smoke run.
  """

  def __init__(self, cache_dir):
    self.cache_dir = cache_dir

  def env(self, devices=None):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["JAX_COMPILATION_CACHE_DIR"] = self.cache_dir
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    env["XLA_FLAGS"] = FAST_COMPILE
    if devices:
      env["XLA_FLAGS"] += f" --xla_force_host_platform_device_count={devices}"
    return env

  def main_cmd(self, workdir, *overrides, config=SMOKE):
    return [sys.executable, "-m", "rlalign.main", f"--config={config}", f"--workdir={workdir}",
            *overrides]

  def run(self, cmd, env, check=True):
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    if check and proc.returncode != 0:
      raise AssertionError(f"{cmd[:4]} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc

  def run_main(self, workdir, *overrides, devices=None, check=True, config=SMOKE):
    """One process; ``devices`` fake CPU devices (default: one)."""
    return self.run(self.main_cmd(workdir, *overrides, config=config), self.env(devices), check)

  def run_multiprocess(self, num, workdir, *overrides):
    """``num`` processes with one CPU device each, through launch/local_multiprocess.sh."""
    cmd = [os.path.join(REPO, "launch", "local_multiprocess.sh"), str(num), SMOKE, workdir,
           *overrides]
    # The launcher starts its children with this interpreter, not whichever python3 is first
    # on the PATH (a venv that is not activated).
    return self.run(cmd, {**self.env(), "PYTHON": sys.executable})

  def final_params(self, workdir, phase="rl", role="policy", config=SMOKE):
    """A phase's last checkpointed (step, params of ``role``), read back through orbax."""
    import jax
    from rlalign import checkpoint as ckpt_lib
    from rlalign.models import transformer as tfm
    path, _, arg = config.rpartition(":")
    spec = importlib.util.spec_from_file_location("smoke_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config(arg)
    config.data.data_dir = os.path.join(workdir, "tfds")
    from rlalign import config as config_lib
    cfg = config_lib.from_config_dict(config)
    ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints", phase), save_every=1)
    step = ckpt.latest_step()
    # Restore onto this process's first device, whatever layout the run saved.
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
                          tfm.abstract_params(cfg.role_model(role)))
    params = ckpt.restore_subtree(step, ("roles", role, "params"), target)
    return step, jax.device_get(params)


@pytest.fixture(scope="session")
def cli(tmp_path_factory):
  return Cli(str(tmp_path_factory.mktemp("jax_cache")))
