"""The wheel: ``python -m build`` packs every module and the shipped configs, and the wheel,
installed in a fresh virtualenv, trains, samples and exports from outside the repository.

The virtualenv sees this machine's site-packages (``--system-site-packages``) for the
dependencies, so nothing is downloaded; rlalign itself comes from the wheel alone (the test
checks which copy is imported).
"""
from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
  """Built from a copy of the sources, so the build leaves nothing in the checkout."""
  src = tmp_path_factory.mktemp("src")
  for name in ("setup.cfg", "pyproject.toml", "README.md"):
    shutil.copy(os.path.join(REPO, name), src)
  shutil.copytree(os.path.join(REPO, "rlalign"), src / "rlalign",
                  ignore=shutil.ignore_patterns("__pycache__"))
  out = tmp_path_factory.mktemp("dist")
  subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation",
                  f"--outdir={out}", str(src)], check=True, capture_output=True, timeout=300)
  (path,) = glob.glob(str(out / "rlalign-*.whl"))
  return path


def test_the_wheel_holds_every_module_and_config(wheel):
  names = set(zipfile.ZipFile(wheel).namelist())
  for root, _, files in os.walk(os.path.join(REPO, "rlalign")):
    for f in files:
      rel = os.path.relpath(os.path.join(root, f), REPO)
      if f.endswith((".py", ".sh")):
        assert rel in names, rel
  assert "rlalign/configs/grpo_addition.py" in names
  assert not any(n.startswith(("tests/", "configs/")) for n in names)


@pytest.mark.slow
def test_the_installed_wheel_trains_samples_and_exports_outside_the_repo(wheel, tmp_path):
  venv = tmp_path / "venv"
  subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)],
                 check=True, timeout=300)
  python = str(venv / "bin" / "python")
  subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", wheel],
                 check=True, timeout=300)
  outside = tmp_path / "elsewhere"
  outside.mkdir()
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "PYTHONPATH")}
  run = lambda *args: subprocess.run([python, *args], cwd=outside, env=env, timeout=600,
                                     capture_output=True, text=True, check=True)
  where = run("-c", "import rlalign; print(rlalign.__file__)").stdout.strip()
  assert where.startswith(str(venv)), where
  run("-m", "rlalign.main", "--config=grpo_addition:smoke", "--workdir=run")
  assert os.path.isfile(outside / "run" / "summary.json")
  sampled = run("-m", "rlalign.sample", "--run=run", "--prompt=12+34=", "--temperature=0")
  assert sampled.stdout.endswith("\n") and len(sampled.stdout.splitlines()) == 1
  run("-m", "rlalign.export", "--run=run", "--out=policy_hf")
  assert os.path.isfile(outside / "policy_hf" / "model.safetensors")
  again = run("-m", "rlalign.sample", "--hf_dir=policy_hf", "--prompt=12+34=",
              "--temperature=0", "--max_new_tokens=5")
  assert again.stdout == sampled.stdout
