"""Bad input fails with a message naming the key or file, before anything compiles."""
import json
import os
import subprocess
import sys

import pytest

from rlalign import config as config_lib
from rlalign.profiling import count_compilations
from rlalign import recipes
from tests.configs import load_config

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def smoke(tmp_path):
  config = load_config("grpo_addition", "smoke")
  config.data.data_dir = str(tmp_path / "tfds")
  return config


def test_unknown_key_names_its_path(tmp_path):
  config = smoke(tmp_path).to_dict()
  config["phases"]["rl"]["group_sise"] = 4
  with pytest.raises(config_lib.ConfigError,
                     match=r"unknown config key 'phases\.rl\.group_sise'"):
    config_lib.from_config_dict(config)


def test_wrong_type_names_key_and_expected_type(tmp_path):
  config = smoke(tmp_path).to_dict()
  config["sampling"]["max_new_tokens"] = 4.5
  with pytest.raises(config_lib.ConfigError, match=r"sampling\.max_new_tokens: expected int"):
    config_lib.from_config_dict(config)


def test_batch_not_a_multiple_of_group_size(tmp_path):
  config = smoke(tmp_path)
  config.phases.rl.batch_size = 18
  with pytest.raises(ValueError,
                     match=r"phases\.rl\.batch_size \(18\).*phases\.rl\.group_size \(4\)"):
    config_lib.from_config_dict(config)


@pytest.mark.parametrize("config", [
    os.path.join(REPO, "configs", "grpo_addition.py") + ":smoke",
    "grpo_addition:smoke",  # a shipped config, by name: what an installed wheel runs
])
def test_cli_reports_config_errors_without_a_traceback(tmp_path, config):
  proc = subprocess.run(
      [sys.executable, "-m", "rlalign.main", f"--config={config}",
       f"--workdir={tmp_path / 'run'}", "--config.phases.rl.batch_size=18"],
      cwd=REPO, capture_output=True, text=True, timeout=300,
      env={k: v for k, v in os.environ.items() if k != "XLA_FLAGS"})
  assert proc.returncode == 2
  assert "config error: phases.rl.batch_size (18)" in proc.stderr
  assert "Traceback" not in proc.stderr
  assert not os.path.exists(tmp_path / "run" / "checkpoints")


@pytest.mark.parametrize("args, message", [
    (["--config.phases.rl.group_sise=4"],
     "config error: unknown key '--config.phases.rl.group_sise': 'group_sise' Did you mean "
     "\"group_size\" instead of \"group_sise\"?"),
    (["--config.phases.rl.group_size=abc"],
     "flag error: flag --config.phases.rl.group_size=abc: invalid literal for int() with base "
     "10: 'abc'"),
    (["--no_such_flag"], "flag error: Unknown command line flag 'no_such_flag'"),
    (["--config=configs/no_such_config.py:smoke"],
     "config error: --config: no such file 'configs/no_such_config.py' (nor a shipped "
     f"config: {', '.join(config_lib.shipped_configs())})"),
])
def test_cli_reports_flag_errors_in_one_line(tmp_path, args, message):
  """Mistakes on the command line, caught while absl parses it: one line, exit 2."""
  proc = subprocess.run(
      [sys.executable, "-m", "rlalign.main",
       f"--config={os.path.join(REPO, 'configs', 'grpo_addition.py')}:smoke",
       f"--workdir={tmp_path / 'run'}", *args],
      cwd=REPO, capture_output=True, text=True, timeout=300,
      env={k: v for k, v in os.environ.items() if k != "XLA_FLAGS"})
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines() == [message]
  assert not os.path.exists(tmp_path / "run")


@pytest.mark.parametrize("args, message", [
    (["--config", "grpo_addition:smoke", "--config.phases.rl.batch_size=18"],
     "config error: phases.rl.batch_size (18)"),  # "--config VALUE", a shipped name
    (["--config=grpo_hf:/no_such_checkpoint"],  # get_config(arg) itself fails
     "config error: Configuration is not available because of an earlier failure to load: "
     "no config.json at /no_such_checkpoint"),
])
def test_cli_config_file_errors_are_one_line(tmp_path, args, message):
  proc = subprocess.run(
      [sys.executable, "-m", "rlalign.main", f"--workdir={tmp_path / 'run'}", *args],
      cwd=str(tmp_path), capture_output=True, text=True, timeout=300,
      env={k: v for k, v in os.environ.items() if k != "XLA_FLAGS"})
  assert proc.returncode == 2
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith(message), proc.stderr


def jsonl_config(tmp_path, lines, max_prompt_len=24):
  path = tmp_path / "prompts.jsonl"
  if lines is not None:
    path.write_text("\n".join(lines) + "\n")
  config = load_config("grpo_jsonl", str(path))
  config.data.max_prompt_len = max_prompt_len
  config.data.data_dir = str(tmp_path / "tfds")
  return config_lib.from_config_dict(config), str(path)


GOOD = json.dumps({"prompt": "2+2=", "answer": "4", "demonstration": "4"})


@pytest.mark.parametrize("lines, error, message", [
    (None, FileNotFoundError, r"prompts\.jsonl"),
    ([GOOD, "{not json"], ValueError, r"prompts\.jsonl:2"),
    ([GOOD, json.dumps({"prompt": ""})], ValueError, r"prompts\.jsonl:2.*empty"),
    ([GOOD, json.dumps({"answer": "1"})], ValueError, r"prompts\.jsonl:2.*prompt"),
    ([GOOD, json.dumps({"prompt": "x" * 40, "answer": "1"})], ValueError, r"max_prompt_len"),
])
def test_bad_prompt_files_fail_before_compiling(tmp_path, lines, error, message):
  cfg, _ = jsonl_config(tmp_path, lines)
  with count_compilations() as compiles:
    with pytest.raises(error, match=message):
      recipes.run(cfg, str(tmp_path / "run"))
  assert compiles.count == 0
  assert not os.path.exists(tmp_path / "run" / "checkpoints" / "rl" / "0")


@pytest.mark.parametrize("key, value, message", [
    ("sampling.top_k", 10_000, r"sampling\.top_k \(10000\) is larger than roles\.\w+'s "
                               r"vocabulary"),
    ("seed", -1, r"seed must be in \[0, 2\*\*31\), got -1"),
    ("seed", 2**40, r"seed must be in \[0, 2\*\*31\)"),
])
def test_settings_the_run_cannot_use_fail_before_compiling(tmp_path, key, value, message):
  """A top_k beyond the vocabulary (once caught only after the warm start had trained and
  saved) and a seed the data library would reject, both named before anything compiles."""
  config = smoke(tmp_path)
  section, _, leaf = key.rpartition(".")
  (config[section] if section else config)[leaf] = value
  with count_compilations() as compiles:
    with pytest.raises(ValueError, match=message):
      recipes.run(config_lib.from_config_dict(config), str(tmp_path / "run"))
  assert compiles.count == 0
