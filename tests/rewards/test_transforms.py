"""Reward transforms and sources: hand computations of each transform and of their
composition through ``combine``, and the config forms that name them."""
import numpy as np
import pytest

from rlalign import config as config_lib
from rlalign.rewards import base, transforms
from rlalign.rewards.transforms import TransformSpec


def spec(name, **settings):
  return TransformSpec(name, transforms.get(name).settings(**settings))


def test_clip_by_hand():
  out = transforms.apply(spec("clip", low=-0.5, high=2.0), np.array([-3.0, 0.1, 5.0]),
                         transforms.Context(1, None))
  np.testing.assert_allclose(out, [-0.5, 0.1, 2.0])


def test_group_norm_normalises_each_group_by_hand():
  values = np.array([1.0, 3.0, 0.0, 0.0, 10.0, 20.0, 30.0, 40.0], np.float32)
  out = np.asarray(transforms.apply(spec("group_norm", eps=1e-6), values,
                                    transforms.Context(4, None)))
  # group 1: mean 1, population std sqrt((0 + 4 + 1 + 1) / 4) = sqrt(1.5)
  g1 = (np.array([1.0, 3.0, 0.0, 0.0]) - 1.0) / (np.sqrt(1.5) + 1e-6)
  # group 2: mean 25, std sqrt((225 + 25 + 25 + 225) / 4) = sqrt(125)
  g2 = (np.array([10.0, 20.0, 30.0, 40.0]) - 25.0) / (np.sqrt(125.0) + 1e-6)
  np.testing.assert_allclose(out, np.concatenate([g1, g2]), rtol=1e-5)
  centred = transforms.apply(spec("group_norm", scale=False), values, transforms.Context(4, None))
  np.testing.assert_allclose(centred, [0, 2, -1, -1, -15, -5, 5, 15], atol=1e-6)


def test_lsc_is_log_sigmoid_of_the_margin_over_the_reference():
  values = np.array([2.0, -1.0, 0.5])
  reference = np.array([1.0, 1.0, 0.5])
  out = transforms.apply(spec("lsc"), values, transforms.Context(1, reference))
  np.testing.assert_allclose(out, -np.log1p(np.exp(-(values - reference))), rtol=1e-6)
  with pytest.raises(ValueError, match="reference"):
    transforms.apply(spec("lsc"), values, transforms.Context(1, None))


def test_reference_quantile_matches_numpy():
  scores = np.random.default_rng(0).normal(size=(5, 7)).astype(np.float32)
  out = transforms.reference_quantile(scores, transforms.LSCSettings(quantile=0.85))
  np.testing.assert_allclose(out, np.quantile(scores, 0.85, axis=1), rtol=1e-5)


def test_gdpo_normalises_each_source_before_weighting():
  # A dense source on a large scale and a sparse 0/1 source: summed raw, the dense one
  # decides every advantage; normalised apart, each gets its weight's say.
  dense = np.array([100.0, 101.0, 102.0, 103.0], np.float32)
  sparse = np.array([1.0, 0.0, 0.0, 0.0], np.float32)
  norm = (spec("group_norm"),)
  terms = [base.RewardTerm("a", 1.0, source="dense", transforms=norm),
           base.RewardTerm("b", 2.0, source="sparse", transforms=norm)]
  out = np.asarray(base.combine(terms, {"dense": dense, "sparse": sparse}, group_size=4))
  z = lambda x: (x - x.mean()) / (x.std() + 1e-6)
  np.testing.assert_allclose(out, z(dense) + 2.0 * z(sparse), rtol=1e-5)
  assert out[0] == out.max()  # the sparse success wins although its dense score is lowest


def test_transforms_compose_in_order():
  values = np.array([-4.0, 0.0, 4.0], np.float32)
  term = base.RewardTerm("a", 0.5, source="a",
                         transforms=(spec("clip", low=-1.0, high=1.0), spec("batch_norm")))
  out = np.asarray(base.combine([term], {"a": values}))
  clipped = np.array([-1.0, 0.0, 1.0])
  np.testing.assert_allclose(out, 0.5 * (clipped - 0) / (clipped.std() + 1e-6), rtol=1e-5)


def test_config_names_sources_and_transforms():
  cfg = config_lib.from_config_dict({
      "data": {"data_dir": "/tmp/unused"},
      "roles": {"policy": {}, "reference": {"weights": {"source": "role", "role": "policy"},
                                            "trainable": False},
                "rm_a": {"heads": ("scalar",)}, "rm_b": {"heads": ("scalar",)}},
      "phases": {"rl": {"rewards": {
          "rm_a": {"name": "reward_model", "role": "rm_a", "transforms": ("group_norm",)},
          "rm_b": {"name": "reward_model", "role": "rm_b", "weight": 0.5,
                   "transforms": ({"name": "lsc", "quantile": 0.5}, {"name": "clip",
                                                                       "low": -2.0})}},
          "monitors": {"exact_match": 1.0}}}})
  rl = cfg.phase_configs["rl"].rl()
  assert [t.key for t in rl.rewards] == ["rm_a", "rm_b"]
  assert [t.name for t in rl.rewards] == ["reward_model", "reward_model"]
  assert [s.name for s in rl.rewards[1].transforms] == ["lsc", "clip"]
  assert rl.rewards[1].transforms[0].settings.quantile == 0.5
  assert [t.key for t in rl.monitors] == ["exact_match"]
  assert [t.key for t in rl.lsc_terms] == ["rm_b"]
  # The stored form reads back to the same config.
  from rlalign.rl import experiment
  again = config_lib.from_config_dict(experiment.to_dict(cfg))
  assert again.phases == cfg.phases and again.train == cfg.train


@pytest.mark.parametrize("rewards, match", [
    ({"exact_match": {"transforms": ("nope",)}}, r"rewards.exact_match.transforms\[0\].name"),
    ({"exact_match": {"transforms": ({"name": "clip", "lo": 0},)}}, "lo"),
])
def test_bad_transforms_are_named(rewards, match):
  with pytest.raises(config_lib.ConfigError, match=match):
    config_lib.from_config_dict({"data": {"data_dir": "/tmp/unused"},
                                 "phases": {"rl": {"rewards": rewards}}})


@pytest.mark.parametrize("phase, match", [
    (dict(rewards={"exact_match": {"transforms": ({"name": "clip", "low": 1.0, "high": 0.0},)}}),
     r"rewards.exact_match.transforms\[0\]: low"),
    (dict(group_size=1, batch_size=4, advantage="none",
          rewards={"exact_match": {"transforms": ("group_norm",)}}), "group_size >= 2"),
    (dict(rewards={"exact_match": {"transforms": ({"name": "lsc", "quantile": 1.5},)}}),
     "quantile"),
    (dict(monitors={"exact_match": {"transforms": ("clip",)}}), "monitor"),
])
def test_bad_transform_values_fail_validation(phase, match):
  with pytest.raises(ValueError, match=match):
    config_lib.from_config_dict({"data": {"data_dir": "/tmp/unused"}, "phases": {"rl": phase}})


def test_two_terms_of_one_source_are_refused():
  terms = (base.RewardTerm("exact_match"), base.RewardTerm("exact_match", 2.0))
  with pytest.raises(ValueError, match="share the source 'exact_match'"):
    base.check_terms(terms, "rl.rewards")
