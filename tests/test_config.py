"""Tests for rlalign.config.from_config_dict on the shipped config and broken variants."""

import copy
import os

import pytest

from rlalign import config as config_lib
from rlalign.objectives import grpo
from tests.configs import load_config


# Like rlalign.main, which fills in data.data_dir before converting; nothing is written there.
DATA_DIR = "/nonexistent/rlalign-test-tfds"


def _config_dict(arg="smoke"):
  d = copy.deepcopy(load_config("grpo_addition", arg).to_dict())
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
    if key == "objective":
      assert cfg.objective.name == value["name"]
      for hp, v in value.items():
        if hp != "name":
          assert getattr(cfg.objective.hparams, hp) == v, f"{where}.{hp}"
    elif key == "recipe" and not path:
      assert cfg.recipe.name == value["name"]
      _assert_matches(cfg.recipe.settings, {k: v for k, v in value.items() if k != "name"},
                      "recipe.")
    elif key == "rewards":
      assert tuple((t.name, t.weight) for t in cfg.rewards) == tuple(
          (name, float(w)) for name, w in value.items()), where
    elif key == "rules":
      assert cfg.rules == tuple((name, tuple(axes)) for name, axes in value.items()), where
    elif key in ("roles", "phases") and not path:
      named = dict(getattr(cfg, key))
      assert sorted(named) == sorted(value), where
      for name, section in value.items():
        _assert_matches(named[name], section, f"{where}.{name}.")
    elif isinstance(value, dict):
      _assert_matches(getattr(cfg, key), value, where + ".")
    elif isinstance(value, (tuple, list)):
      assert tuple(getattr(cfg, key)) == tuple(value), where
    else:
      got = getattr(cfg, key)
      assert got == value and type(got) is type(value), (where, got, value)


@pytest.mark.parametrize("arg", ["", "smoke"])
def test_shipped_config_converts(arg):
  c = load_config("grpo_addition", arg)
  c.data.data_dir = DATA_DIR
  cfg = config_lib.from_config_dict(c)  # the ConfigDict itself
  assert isinstance(cfg, config_lib.ExperimentConfig)
  rl = cfg.phase_configs["rl"]
  assert isinstance(rl.objective.hparams, grpo.GRPOConfig)
  assert isinstance(rl.rewards, tuple)
  assert cfg.recipe.settings.order == ("warm_start", "rl")
  _assert_matches(cfg, c.to_dict())
  # A plain dict converts the same way.
  assert config_lib.from_config_dict(_config_dict(arg)) == cfg


def test_smoke_config_overrides_apply():
  full = config_lib.from_config_dict(_config_dict(""))
  smoke = config_lib.from_config_dict(_config_dict("smoke"))
  assert smoke.model.d_model < full.model.d_model
  assert smoke.phase_configs["rl"].batch_size < full.phase_configs["rl"].batch_size
  assert smoke.phase_configs["rl"].steps < full.phase_configs["rl"].steps
  assert smoke.phase_configs["rl"].objective == full.phase_configs["rl"].objective


def test_get_config_rejects_unknown_argument():
  with pytest.raises(ValueError, match="'big'"):
    load_config("grpo_addition", "big")


def test_unknown_top_level_key_raises():
  d = _smoke_dict()
  d["foo"] = 1
  msg = _convert_error(d)
  assert "'foo'" in msg
  assert "phases" in msg and "model" in msg  # lists what is accepted


def test_unknown_nested_key_raises_naming_section_and_key():
  d = _smoke_dict()
  d["phases"]["rl"]["foo"] = 1
  msg = _convert_error(d)
  assert "phases.rl.foo" in msg, msg
  assert "group_size" in msg  # lists what a phase accepts


def test_unknown_role_key_names_the_role():
  d = _smoke_dict()
  d["roles"]["reference"]["trainble"] = False
  assert "roles.reference.trainble" in _convert_error(d)


@pytest.mark.parametrize("path, value, expected", [
    ("phases.rl.group_size", "8", "phases.rl.group_size: expected int, got str '8'"),
    ("model.tie_embeddings", 1, "model.tie_embeddings: expected bool, got int 1"),
    ("model.d_model", 32.0, "model.d_model: expected int, got float 32.0"),
    ("roles.policy.optimizer.learning_rate", True,
     "roles.policy.optimizer.learning_rate: expected float, got bool"),
    ("roles.policy.optimizer.learning_rate", "1e-3",
     "roles.policy.optimizer.learning_rate: expected float, got str"),
    ("sampling.stop_tokens", 2, "sampling.stop_tokens: expected a sequence"),
    ("sampling.stop_tokens", [2, "x"], "sampling.stop_tokens[1]: expected int, got str"),
    ("phases.warm_start.optimizer.warmup_steps", 1.5,
     "phases.warm_start.optimizer.warmup_steps: expected int"),
    ("roles.reference.weights.source", 3, "roles.reference.weights.source: expected str"),
])
def test_wrong_type_raises_naming_key_and_expected_type(path, value, expected):
  d = _smoke_dict()
  *parents, key = path.split(".")
  node = d
  for p in parents:
    node = node[p]
  node[key] = value
  assert expected in _convert_error(d)


@pytest.mark.parametrize("path, value", [
    (("roles", "policy", "optimizer", "learning_rate"), float("nan")),
    (("roles", "policy", "optimizer", "learning_rate"), float("inf")),
    (("sampling", "temperature"), float("-inf")),
    (("phases", "rl", "objective", "clip_eps"), float("nan")),
])
def test_non_finite_floats_are_refused_naming_the_key(path, value):
  d = _smoke_dict()
  node = d
  for key in path[:-1]:
    node = node[key]
  node[path[-1]] = value
  msg = _convert_error(d)
  assert msg.startswith(".".join(path) + ": expected a finite float"), msg


def test_int_accepted_for_float_fields():
  d = _smoke_dict()
  d["roles"]["policy"]["optimizer"]["learning_rate"] = 1
  d["phases"]["rl"]["objective"]["clip_eps"] = 1
  d["sampling"]["temperature"] = 0
  cfg = config_lib.from_config_dict(d)
  lr = cfg.role_configs["policy"].optimizer.learning_rate
  assert lr == 1.0 and type(lr) is float
  assert type(cfg.phase_configs["rl"].objective.hparams.clip_eps) is float
  assert cfg.sampling.temperature == 0.0 and type(cfg.sampling.temperature) is float


def test_optional_float_accepts_none_and_number():
  d = _smoke_dict()
  objective = d["phases"]["rl"]["objective"]
  hparams = lambda: config_lib.from_config_dict(d).phase_configs["rl"].objective.hparams
  objective["clip_eps_high"] = None
  assert hparams().clip_eps_high is None
  objective["clip_eps_high"] = 0.28
  assert hparams().clip_eps_high == 0.28
  objective["clip_eps_high"] = "high"
  assert "phases.rl.objective.clip_eps_high: expected float" in _convert_error(d)


def test_batch_size_not_multiple_of_group_size_raises_naming_both():
  d = _smoke_dict()
  d["phases"]["rl"].update(batch_size=18, group_size=4, minibatches=1)
  with pytest.raises(ValueError) as e:
    config_lib.from_config_dict(d)
  msg = str(e.value)
  assert "phases.rl.batch_size (18)" in msg and "phases.rl.group_size (4)" in msg


@pytest.mark.parametrize("edit, match", [
    (lambda d: d["model"].update(n_heads=4, n_kv_heads=3), r"model\.n_heads"),
    (lambda d: d["phases"]["rl"]["objective"].update(clip_eps=-0.2),
     r"phases\.rl\.objective\.clip_eps"),
    (lambda d: d["roles"]["policy"]["optimizer"].update(learning_rate=float("nan")),
     r"roles\.policy\.optimizer\.learning_rate"),
    (lambda d: d["roles"]["reference"]["weights"].update(role="critic"),
     r"roles\.reference\.weights\.role 'critic' is not a role"),
    (lambda d: d["roles"]["policy"].update(trainable=False),
     r"phases\.\w+: objective '\w+' trains role 'policy', but roles\.policy\.trainable"),
    (lambda d: d["recipe"].update(order=("warm_start", "dpo")),
     r"recipe\.order names \['dpo'\]"),
    (lambda d: d["phases"]["rl"].update(slots={"critic": "policy"}),
     r"phases\.rl\.slots names \['critic'\]"),
])
def test_values_are_validated_after_conversion(edit, match):
  d = _smoke_dict()
  edit(d)
  with pytest.raises(ValueError, match=match):
    config_lib.from_config_dict(d)


def test_a_phase_training_an_undeclared_role_is_named():
  d = _smoke_dict()
  del d["roles"]["policy"]
  d["roles"]["reference"]["weights"] = {"source": "random"}
  with pytest.raises(ValueError, match=r"trains role 'policy', which is not declared"):
    config_lib.from_config_dict(d)


def test_unknown_objective_name_lists_registered():
  d = _smoke_dict()
  d["phases"]["rl"]["objective"]["name"] = "ppo_magic"
  msg = _convert_error(d)
  assert "phases.rl.objective.name" in msg and "'ppo_magic'" in msg
  assert "'grpo'" in msg and "'sft'" in msg
  d["phases"]["rl"]["objective"].pop("name")
  msg = _convert_error(d)
  assert "phases.rl.objective.name" in msg and "'grpo'" in msg


def test_unknown_objective_hparam_raises_and_lists_accepted():
  d = _smoke_dict()
  d["phases"]["rl"]["objective"]["clip_epsilon"] = 0.1
  msg = _convert_error(d)
  assert "phases.rl.objective.clip_epsilon" in msg
  assert "clip_eps" in msg and "kl_coef" in msg  # lists the hparams GRPO accepts


def test_switching_objective_drops_the_old_objectives_keys_with_a_note(capsys):
  """--config.phases.rl.objective.name=sft leaves grpo's keys behind: they are dropped with a
  note, while a key no objective has is still an error."""
  d = _smoke_dict()
  d["phases"]["rl"]["objective"]["name"] = "sft"
  cfg_phase = lambda: config_lib.from_config_dict(d).phase_configs["rl"]
  assert cfg_phase().objective.name == "sft"
  assert "takes no aggregation, clip_eps" in capsys.readouterr().err
  d["phases"]["rl"]["objective"]["clip_epsilon"] = 0.1
  assert "clip_epsilon" in _convert_error(d)


def test_rewards_mapping_converts_to_weighted_terms():
  d = _smoke_dict()
  rl = d["phases"]["rl"]
  rl["rewards"] = {"exact_match": 1, "stopped": 0.5}
  rewards = config_lib.from_config_dict(d).phase_configs["rl"].rewards
  assert [(t.name, t.weight) for t in rewards] == [("exact_match", 1.0), ("stopped", 0.5)]
  assert type(rewards[0].weight) is float
  rl["rewards"] = [["exact_match", 2.0]]
  rewards = config_lib.from_config_dict(d).phase_configs["rl"].rewards
  assert [(t.name, t.weight) for t in rewards] == [("exact_match", 2.0)]
  rl["rewards"] = {"exact_match": "1"}
  assert "phases.rl.rewards.exact_match: expected a weight or a mapping" in _convert_error(d)


def test_reward_settings_are_typed():
  d = _smoke_dict()
  d["roles"]["reward_model"] = {"trainable": False, "heads": ["scalar"]}
  d["phases"]["rl"]["rewards"] = {"reward_model": {"weight": 0.5, "role": "reward_model",
                                                   "scale": 2}}
  (term,) = config_lib.from_config_dict(d).phase_configs["rl"].rewards
  assert (term.weight, term.settings.role, term.settings.scale) == (0.5, "reward_model", 2.0)
  assert term.roles == ("reward_model",)
  d["phases"]["rl"]["rewards"]["reward_model"]["scael"] = 1.0
  assert "phases.rl.rewards.reward_model.scael" in _convert_error(d)
  del d["phases"]["rl"]["rewards"]["reward_model"]["scael"]
  d["phases"]["rl"]["rewards"]["reward_model"]["role"] = "judge"
  with pytest.raises(ValueError, match=r"rewards\.reward_model reads role 'judge'"):
    config_lib.from_config_dict(d)


def test_unknown_reward_name_raises():
  d = _smoke_dict()
  d["phases"]["rl"]["rewards"] = {"exact_matcher": 1.0}
  msg = _convert_error(d)
  assert "phases.rl.rewards.exact_matcher" in msg and "'exact_match'" in msg


def test_eval_judges_name_any_in_graph_reward():
  d = _smoke_dict()
  d["train"]["eval_judges"] = {"pass@1": "exact_match", "format": "stopped"}
  judges = config_lib.from_config_dict(d).train.eval_judges
  assert [(m, t.name) for m, t in judges] == [("pass@1", "exact_match"), ("format", "stopped")]
  d["train"]["eval_judges"] = {"pass@1": "exact_match_text"}
  with pytest.raises(ValueError, match=r"train\.eval_judges\.pass@1: 'exact_match_text' is a "
                                       r"host reward"):
    config_lib.from_config_dict(d)


def test_unknown_recipe_lists_registered():
  d = _smoke_dict()
  d["recipe"] = {"name": "psro"}
  msg = _convert_error(d)
  assert "recipe.name" in msg and "'sequence'" in msg


def test_to_dict_round_trips():
  cfg = config_lib.from_config_dict(_smoke_dict())
  assert config_lib.from_config_dict(config_lib.to_dict(cfg)) == cfg


def test_a_shipped_config_is_found_by_name_and_a_path_wins(tmp_path, monkeypatch):
  shipped = os.path.join(config_lib.CONFIG_DIR, "grpo_addition.py")
  assert config_lib.resolve_config_path("grpo_addition") == shipped
  assert config_lib.resolve_config_path("grpo_addition.py") == shipped
  assert "grpo_addition" in config_lib.shipped_configs()
  assert "__init__" not in config_lib.shipped_configs()
  monkeypatch.chdir(tmp_path)
  (tmp_path / "grpo_addition.py").write_text("def get_config(): pass\n")
  assert config_lib.resolve_config_path("grpo_addition.py") == "grpo_addition.py"
  assert config_lib.resolve_config_path("no_such_config") == "no_such_config"
  assert config_lib.resolve_config_path("sub/grpo_addition.py") == "sub/grpo_addition.py"


def test_a_run_reader_names_shipped_configs_as_the_cli_does(tmp_path):
  from rlalign import workdir
  config = workdir.load_config_file("grpo_addition:smoke")
  assert config.phases.rl.steps == load_config("grpo_addition", "smoke").phases.rl.steps
  with pytest.raises(workdir.RunInputError, match=r"--config=grpo_hf:/no_such: .*no config"):
    workdir.load_config_file("grpo_hf:/no_such")
