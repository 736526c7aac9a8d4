"""A resumed run's config against the stored one: what is accepted, refused and recorded."""
import json

import pytest

from rlalign.rl import config_changes

SCHEDULE = ["warm_start", "rl"]
STORED = {"seed": 0, "train": {"log_every": 10, "eval_every": 50},
          "roles": {"policy": {"optimizer": {"learning_rate": 5e-4}}},
          "phases": {"warm_start": {"steps": 4}, "rl": {"steps": 4}},
          "data": {"num_train": 512, "data_dir": "/a/tfds", "prompt_buckets": [8, 16]}}


def changed(**edits):
  """STORED with dotted keys set."""
  out = json.loads(json.dumps(STORED))
  for key, value in edits.items():
    node = out
    *parents, leaf = key.split("__")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return out


def write(tmp_path, config=STORED):
  (tmp_path / "config.json").write_text(json.dumps(config))


def test_diff_lists_every_changed_leaf_with_both_values():
  new = changed(seed=1, roles__policy__optimizer__learning_rate=1e-3,
                data__prompt_buckets=[8])
  assert config_changes.diff(STORED, new) == {
      "data.prompt_buckets": ([8, 16], [8]),
      "roles.policy.optimizer.learning_rate": (5e-4, 1e-3), "seed": (0, 1)}
  assert config_changes.diff(STORED, STORED) == {}
  added = {**STORED, "extra": {"x": 1}}
  assert config_changes.diff(STORED, added) == {"extra.x": ("<absent>", 1)}


@pytest.mark.parametrize("edits, started, refused", [
    # Cadence and location: always fine.
    (dict(train__log_every=2, train__eval_every=5, data__data_dir="/b/tfds"),
     {"warm_start": True, "rl": True}, []),
    # More steps of the phase in progress, or of the last one on a finished run.
    (dict(phases__rl__steps=8), {"warm_start": True, "rl": True}, []),
    (dict(phases__warm_start__steps=8), {"warm_start": True, "rl": False}, []),
    # A finished phase's length once a later one has started: it would rewrite history.
    (dict(phases__warm_start__steps=8), {"warm_start": True, "rl": True},
     ["phases.warm_start.steps"]),
    # Fewer steps, and anything that changes what the run computes.
    (dict(phases__rl__steps=2), {"warm_start": True, "rl": True}, ["phases.rl.steps"]),
    (dict(seed=3, data__num_train=1024, roles__policy__optimizer__learning_rate=1.0),
     {"warm_start": True, "rl": False},
     ["data.num_train", "roles.policy.optimizer.learning_rate", "seed"]),
])
def test_split_accepts_cadence_and_length_and_refuses_the_rest(edits, started, refused):
  changes = config_changes.diff(STORED, changed(**edits))
  accepted, rejected = config_changes.split(changes, SCHEDULE, started)
  assert sorted(rejected) == refused
  assert set(accepted) | set(rejected) == set(changes)


def test_a_refused_change_names_each_key_and_writes_nothing(tmp_path):
  write(tmp_path)
  new = changed(roles__policy__optimizer__learning_rate=1e-3, seed=7)
  with pytest.raises(ValueError) as e:
    config_changes.check_resume(str(tmp_path), new, SCHEDULE, {"warm_start": True}, step=4,
                                allow=False)
  message = str(e.value)
  assert "\n" not in message
  assert "roles.policy.optimizer.learning_rate: 0.0005 -> 0.001" in message
  assert "seed: 0 -> 7" in message and "allow_config_change" in message
  assert not (tmp_path / "config_changes.jsonl").exists()


def test_accepted_and_forced_changes_are_recorded(tmp_path):
  write(tmp_path)
  new = changed(train__log_every=1)
  assert config_changes.check_resume(str(tmp_path), new, SCHEDULE, {"rl": True}, step=6,
                                     allow=False) == {"train.log_every": (10, 1)}
  forced = changed(seed=7)
  config_changes.check_resume(str(tmp_path), forced, SCHEDULE, {"rl": True}, step=6,
                              allow=True)
  lines = [json.loads(l) for l in (tmp_path / "config_changes.jsonl").read_text().splitlines()]
  assert [l["changes"] for l in lines] == [{"train.log_every": [10, 1]}, {"seed": [0, 7]}]
  assert [l["forced"] for l in lines] == [[], ["seed"]] and lines[0]["step"] == 6


def test_a_fresh_run_and_an_unchanged_resume_compare_nothing(tmp_path):
  assert config_changes.check_resume(str(tmp_path), STORED, SCHEDULE, {}, 0, False) is None
  write(tmp_path, {"seed": 99})  # no checkpoint yet: a new run may reuse the workdir
  assert config_changes.check_resume(str(tmp_path), STORED, SCHEDULE, {"rl": False}, 0,
                                     False) is None
  write(tmp_path)
  assert config_changes.check_resume(str(tmp_path), STORED, SCHEDULE, {"rl": True}, 4,
                                     False) is None


def test_long_values_are_shortened(tmp_path):
  write(tmp_path, {**STORED, "data": {**STORED["data"], "template": "x" * 10_000}})
  new = {**STORED, "data": {**STORED["data"], "template": "y" * 10_000}}
  with pytest.raises(ValueError) as e:
    config_changes.check_resume(str(tmp_path), new, SCHEDULE, {"rl": True}, 4, False)
  assert len(str(e.value)) < 600 and "xxx..." in str(e.value)


def test_an_unreadable_stored_config_names_its_file(tmp_path):
  (tmp_path / "config.json").write_text('{"seed": 0')  # truncated
  with pytest.raises(ValueError, match=r"config\.json: unreadable stored config"):
    config_changes.check_resume(str(tmp_path), STORED, SCHEDULE, {"rl": True}, 4, False)


def test_a_setting_added_to_the_code_since_the_run_started_is_no_change_at_its_default():
  """A config.json written before a field existed lacks its key: at the field's default it is
  the same run; at any other value it is a change."""
  import dataclasses
  from rlalign.rl import experiment
  from rlalign.data.pipeline import DataConfig
  from rlalign.rl.phases import PhaseConfig
  cfg = experiment.ExperimentConfig(data=DataConfig(data_dir="/d"),
                                    phases=(("verify", PhaseConfig()),))
  new = experiment.to_dict(cfg)
  old = json.loads(json.dumps(new))
  for section, key in (("data", "eval_splits"), ("data", "hard_digits")):
    del old[section][key]
  del old["phases"]["verify"]["objective"]["clip_eps"]
  defaults = experiment.field_defaults(cfg)
  assert defaults["data.hard_digits"] == 0 and defaults["phases.verify.objective.clip_eps"] == 0.2
  assert config_changes.diff(old, new, defaults) == {}
  assert set(config_changes.diff(old, new)) == {"data.eval_splits", "data.hard_digits",
                                                 "phases.verify.objective.clip_eps"}
  moved = experiment.to_dict(dataclasses.replace(cfg, data=dataclasses.replace(
      cfg.data, hard_digits=4, max_digits=3)))
  assert config_changes.diff(old, moved, defaults) == {"data.hard_digits": ("<absent>", 4)}
