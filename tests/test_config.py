"""Tests for rlalign.config.from_config_dict on the shipped config and broken variants."""

import copy
import importlib.util
import pathlib

import pytest

from rlalign import config as config_lib
from rlalign.objectives import grpo

CONFIG_PATH = pathlib.Path(__file__).resolve().parents[1] / "configs" / "grpo_addition.py"


def _load_config_module():
  spec = importlib.util.spec_from_file_location("grpo_addition_config", CONFIG_PATH)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


CONFIG_MODULE = _load_config_module()


# Like rlalign.main, which fills in data.data_dir before converting; nothing is written there.
DATA_DIR = "/nonexistent/rlalign-test-tfds"


def _config_dict(arg="smoke"):
  d = copy.deepcopy(CONFIG_MODULE.get_config(arg).to_dict())
  d["data"]["data_dir"] = DATA_DIR
  return d


_smoke_dict = _config_dict


def _convert_error(d):
  with pytest.raises(config_lib.ConfigError) as e:
    config_lib.from_config_dict(d)
  return str(e.value)


def _assert_matches(cfg, d, path=""):
  """Every key of the config dict reached the typed config with its value."""
  for key, value in d.items():
    where = f"{path}{key}"
    if key == "objective" and not path:
      assert cfg.objective.name == value["name"]
      for hp, v in value.items():
        if hp != "name":
          assert getattr(cfg.objective.hparams, hp) == v, f"objective.{hp}"
    elif key == "rewards":
      assert cfg.rewards == tuple((name, float(w)) for name, w in value.items()), where
    elif key == "rules":
      assert cfg.rules == tuple((name, tuple(axes)) for name, axes in value.items()), where
    elif isinstance(value, dict):
      _assert_matches(getattr(cfg, key), value, where + ".")
    else:
      got = getattr(cfg, key)
      assert got == value and type(got) is type(value), (where, got, value)


@pytest.mark.parametrize("arg", ["", "smoke"])
def test_shipped_config_converts(arg):
  c = CONFIG_MODULE.get_config(arg)
  c.data.data_dir = DATA_DIR
  cfg = config_lib.from_config_dict(c)  # the ConfigDict itself
  assert isinstance(cfg, config_lib.ExperimentConfig)
  assert isinstance(cfg.objective.hparams, grpo.GRPOConfig)
  assert isinstance(cfg.rl.rewards, tuple)
  _assert_matches(cfg, c.to_dict())
  # A plain dict converts the same way.
  assert config_lib.from_config_dict(_config_dict(arg)) == cfg


def test_smoke_config_overrides_apply():
  full = config_lib.from_config_dict(_config_dict(""))
  smoke = config_lib.from_config_dict(_config_dict("smoke"))
  assert smoke.model.d_model < full.model.d_model
  assert smoke.rl.batch_size < full.rl.batch_size
  assert smoke.train.steps < full.train.steps
  assert smoke.objective == full.objective


def test_get_config_rejects_unknown_argument():
  with pytest.raises(ValueError, match="'big'"):
    CONFIG_MODULE.get_config("big")


def test_unknown_top_level_key_raises():
  d = _smoke_dict()
  d["foo"] = 1
  msg = _convert_error(d)
  assert "'foo'" in msg
  assert "rl" in msg and "model" in msg  # lists what is accepted


def test_unknown_nested_key_raises_naming_section_and_key():
  d = _smoke_dict()
  d["rl"]["foo"] = 1
  msg = _convert_error(d)
  assert "rl." in msg and "foo" in msg, msg
  assert "group_size" in msg  # lists what rl accepts


def test_unknown_nested_key_message_has_plain_dotted_path():
  d = _smoke_dict()
  d["rl"]["foo"] = 1
  assert "rl.foo" in _convert_error(d)


@pytest.mark.parametrize("section, key, value, expected", [
    ("rl", "group_size", "8", "rl.group_size: expected int, got str '8'"),
    ("model", "tie_embeddings", 1, "model.tie_embeddings: expected bool, got int 1"),
    ("model", "d_model", 32.0, "model.d_model: expected int, got float 32.0"),
    ("optimizer", "learning_rate", True, "optimizer.learning_rate: expected float, got bool"),
    ("optimizer", "learning_rate", "1e-3", "optimizer.learning_rate: expected float, got str"),
    ("sampling", "stop_tokens", 2, "sampling.stop_tokens: expected a sequence"),
    ("sampling", "stop_tokens", [2, "x"], "sampling.stop_tokens[1]: expected int, got str"),
])
def test_wrong_type_raises_naming_key_and_expected_type(section, key, value, expected):
  d = _smoke_dict()
  d[section][key] = value
  assert expected in _convert_error(d)


def test_nested_wrong_type_has_full_path():
  d = _smoke_dict()
  d["warm_start"]["optimizer"]["warmup_steps"] = 1.5
  assert "warm_start.optimizer.warmup_steps: expected int" in _convert_error(d)


def test_int_accepted_for_float_fields():
  d = _smoke_dict()
  d["optimizer"]["learning_rate"] = 1
  d["objective"]["clip_eps"] = 1
  d["sampling"]["temperature"] = 0
  cfg = config_lib.from_config_dict(d)
  assert cfg.optimizer.learning_rate == 1.0 and type(cfg.optimizer.learning_rate) is float
  assert type(cfg.objective.hparams.clip_eps) is float
  assert cfg.sampling.temperature == 0.0 and type(cfg.sampling.temperature) is float


def test_optional_float_accepts_none_and_number():
  d = _smoke_dict()
  d["objective"]["clip_eps_high"] = None
  assert config_lib.from_config_dict(d).objective.hparams.clip_eps_high is None
  d["objective"]["clip_eps_high"] = 0.28
  assert config_lib.from_config_dict(d).objective.hparams.clip_eps_high == 0.28
  d["objective"]["clip_eps_high"] = "high"
  assert "objective.clip_eps_high: expected float" in _convert_error(d)


def test_batch_size_not_multiple_of_group_size_raises_naming_both():
  d = _smoke_dict()
  d["rl"].update(batch_size=18, group_size=4, minibatches=1)
  with pytest.raises(ValueError) as e:
    config_lib.from_config_dict(d)
  msg = str(e.value)
  assert "rl.batch_size (18)" in msg and "rl.group_size (4)" in msg


def test_values_are_validated_after_conversion():
  d = _smoke_dict()
  d["model"].update(n_heads=4, n_kv_heads=3)
  with pytest.raises(ValueError, match=r"model\.n_heads"):
    config_lib.from_config_dict(d)
  d = _smoke_dict()
  d["objective"]["clip_eps"] = -0.2
  with pytest.raises(ValueError, match=r"objective\.clip_eps"):
    config_lib.from_config_dict(d)


def test_unknown_objective_name_lists_registered():
  d = _smoke_dict()
  d["objective"]["name"] = "ppo_magic"
  msg = _convert_error(d)
  assert "objective.name" in msg and "'ppo_magic'" in msg
  assert "'grpo'" in msg and "'sft'" in msg
  d["objective"].pop("name")
  msg = _convert_error(d)
  assert "objective.name" in msg and "'grpo'" in msg


def test_unknown_objective_hparam_raises():
  d = _smoke_dict()
  d["objective"]["clip_epsilon"] = 0.1
  msg = _convert_error(d)
  assert "objective." in msg and "clip_epsilon" in msg
  assert "clip_eps" in msg and "kl_coef" in msg  # lists the hparams GRPO accepts


def test_unknown_objective_hparam_message_has_plain_dotted_path():
  d = _smoke_dict()
  d["objective"]["clip_epsilon"] = 0.1
  assert "objective.clip_epsilon" in _convert_error(d)


def test_sft_objective_rejects_grpo_hparams():
  d = _smoke_dict()
  d["objective"] = {"name": "sft"}
  assert config_lib.from_config_dict(d).objective.name == "sft"
  d["objective"] = {"name": "sft", "kl_coef": 0.1}
  assert "kl_coef" in _convert_error(d)


def test_rewards_mapping_converts_to_tuple_of_pairs():
  d = _smoke_dict()
  d["rl"]["rewards"] = {"exact_match": 1, "stopped": 0.5}
  cfg = config_lib.from_config_dict(d)
  assert cfg.rl.rewards == (("exact_match", 1.0), ("stopped", 0.5))
  assert isinstance(cfg.rl.rewards, tuple) and type(cfg.rl.rewards[0][1]) is float
  d["rl"]["rewards"] = [["exact_match", 2.0]]
  assert config_lib.from_config_dict(d).rl.rewards == (("exact_match", 2.0),)
  d["rl"]["rewards"] = {"exact_match": "1"}
  assert "rl.rewards[0][1]: expected float" in _convert_error(d)


def test_unknown_reward_name_raises():
  d = _smoke_dict()
  d["rl"]["rewards"] = {"exact_matcher": 1.0}
  with pytest.raises(KeyError, match="'exact_matcher'"):
    config_lib.from_config_dict(d)


def test_to_dict_round_trips():
  cfg = config_lib.from_config_dict(_smoke_dict())
  assert config_lib.from_config_dict(config_lib.to_dict(cfg)) == cfg
