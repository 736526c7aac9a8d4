"""The runtime's role bookkeeping: when copies are taken, and keys that follow names."""
import os

import jax
import numpy as np
import pytest

from rlalign import config as config_lib
from rlalign.rl.runtime import Runtime
from tests.configs import load_config


def smoke_config(tmp_path):
  config = load_config("grpo_addition", "smoke")
  config.data.data_dir = str(tmp_path / "tfds")
  config.phases.rl.batch_size = 32  # 8 prompts over this process's 8 devices
  return config


def test_the_reference_is_the_policy_as_rl_starts_not_as_it_was_initialised(tmp_path):
  cfg = config_lib.from_config_dict(smoke_config(tmp_path))
  runtime = Runtime(cfg, str(tmp_path / "run"), [("warm_start", 4), ("rl", 4)])
  initial = jax.device_get(runtime.weights("policy"))
  built = runtime.build_phase("warm_start")
  assert "reference" not in built.frozen  # the warm start reads no reference
  runtime.run(built)
  warm = jax.device_get(runtime.weights("policy"))
  rl = runtime.build_phase("rl")
  reference = jax.device_get(rl.frozen["reference"])
  jax.tree.map(np.testing.assert_array_equal, reference, warm)
  assert not np.array_equal(reference["embed"], initial["embed"])


def test_declaring_another_role_changes_no_other_roles_init(tmp_path):
  config = smoke_config(tmp_path)
  cfg = config_lib.from_config_dict(config)
  config.roles.critic = dict(weights=dict(source="random"), heads=("scalar",))
  with_critic = config_lib.from_config_dict(config)
  one = Runtime(cfg, str(tmp_path / "a"), [("rl", 1)]).weights("policy")
  two = Runtime(with_critic, str(tmp_path / "b"), [("rl", 1)])
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(one),
               jax.device_get(two.weights("policy")))
  assert not np.array_equal(jax.device_get(two.weights("critic")["embed"]),
                            jax.device_get(one["embed"]))


def test_a_judge_reading_a_copy_not_yet_taken_waits(tmp_path):
  """Evaluating a judge would take a role's copy early (the reward model copied from the
  policy before its warm start); such a judge waits until a phase takes the copy."""
  config = smoke_config(tmp_path)
  config.roles.reward_model = dict(weights=dict(source="role", role="policy"),
                                   heads=("scalar",), trainable=False)
  config.train.eval_judges = {"pass@1": "exact_match",
                              "rm": {"name": "reward_model", "role": "reward_model"}}
  runtime = Runtime(config_lib.from_config_dict(config), str(tmp_path / "run"),
                    [("warm_start", 4), ("rl", 4)])
  first = runtime.evaluator()(runtime.weights("policy"))
  assert set(first) == {"eval/pass@1_greedy", "eval/pass@1_sampled"}
  assert "reward_model" not in runtime._weights
  runtime.weights("reward_model")  # what a phase reading it does as it starts
  later = runtime.evaluator()(runtime.weights("policy"))
  assert set(later) == set(first) | {"eval/rm_greedy", "eval/rm_sampled"}


@pytest.mark.slow  # over 20 s; the default suite keeps to about 10 minutes on 2 cores
def test_a_role_with_its_own_layout_trains_like_the_shared_layout(tmp_path):
  """FSDP over 8 devices; the reference replicated by rules of its own: its arrays are whole
  on every device, and one RL step gives the same policy as with the shared layout."""
  from rlalign.parallel.mesh import DEFAULT_RULES
  results = {}
  for own in (False, True):
    config = smoke_config(tmp_path)
    config.mesh.ici = (1, 8, 1)
    config.recipe.order = ("rl",)
    if own:
      config.roles.reference.rules = {k: () if k != "batch" else v
                                      for k, v in dict(DEFAULT_RULES).items()}
    cfg = config_lib.from_config_dict(config)
    runtime = Runtime(cfg, str(tmp_path / f"run_{own}"), [("rl", 1)])
    built = runtime.build_phase("rl")
    reference = built.frozen["reference"]
    assert reference["embed"].sharding.is_fully_replicated == own
    batch = built.phase.put_batch(next(built.data))
    state, _ = built.phase.step_fn(built.state, batch, built.rng, built.frozen)
    results[own] = jax.device_get(state["roles"]["policy"]["params"])
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               results[False], results[True])


def test_role_rules_are_checked_against_the_mesh(tmp_path):
  config = smoke_config(tmp_path)
  config.roles.reference.rules = {"embed": ("model",)}
  import pytest
  with pytest.raises(ValueError, match=r"roles\.reference\.rules maps 'embed' to mesh axis "
                                       r"'model'"):
    config_lib.from_config_dict(config)


@pytest.mark.slow  # over 20 s; the default suite keeps to about 10 minutes on 2 cores
def test_a_phase_checkpoint_holds_the_frozen_roles_it_reads(tmp_path):
  """Resuming restores the reference from the phase's own checkpoint: here the run is resumed
  with the reference's source changed, and the checkpointed reference is what comes back."""
  config = smoke_config(tmp_path)
  config.recipe.order = ("rl",)
  config.train.checkpoint_every = 1
  workdir = str(tmp_path / "run")
  first = Runtime(config_lib.from_config_dict(config), workdir, [("rl", 1)])
  first.run(first.build_phase("rl"))
  reference = jax.device_get(first.weights("reference"))
  config.roles.reference.weights = dict(source="random")
  config.train.allow_config_change = True  # on purpose: a resume refuses it otherwise
  again = Runtime(config_lib.from_config_dict(config), workdir, [("rl", 1)])
  rebuilt = jax.device_get(again.weights("reference"))
  assert not np.array_equal(rebuilt["embed"], reference["embed"])
  resumed = jax.device_get(again.build_phase("rl").frozen["reference"])
  jax.tree.map(np.testing.assert_array_equal, resumed, reference)


def test_a_role_level_adapter_trains_lora_in_every_phase_that_trains_the_role(tmp_path):
  config = smoke_config(tmp_path)
  config.roles.critic = dict(weights=dict(source="role", role="policy"), heads=("scalar",),
                             adapter=dict(lora_rank=2, lora_targets=r"layers/(q|v)"))
  config.phases.rl.objective = dict(name="ppo")
  runtime = Runtime(config_lib.from_config_dict(config), str(tmp_path / "run"), [("rl", 1)])
  roles = runtime.role_specs(config_lib.from_config_dict(config).phase_configs["rl"])
  assert roles["critic"].adapter is not None and roles["policy"].adapter is None
  state, _ = runtime.initial_state(roles)
  critic = state["roles"]["critic"]["params"]
  assert set(critic) == {"layers"} and set(critic["layers"]) == {"q", "v"}
  assert "embed" in state["roles"]["policy"]["params"]


def test_a_phase_of_zero_steps_evaluates_once_and_trains_nothing(tmp_path):
  config = smoke_config(tmp_path)
  config.phases.final = dict(steps=0, batch_size=16, objective=dict(name="sft"))
  config.recipe.order = ("final",)
  runtime = Runtime(config_lib.from_config_dict(config), str(tmp_path / "run"), [("final", 0)])
  before = jax.device_get(runtime.weights("policy"))
  runtime.run(runtime.build_phase("final"))
  runtime.writer.close()
  from rlalign import metrics as metrics_lib
  records = metrics_lib.read_jsonl(str(tmp_path / "run" / "metrics.jsonl"))
  assert [r["step"] for r in records] == [0]
  assert set(records[0]) == {"step", "eval/pass@1_greedy", "eval/pass@1_sampled"}
  jax.tree.map(np.testing.assert_array_equal, before,
               jax.device_get(runtime.weights("policy")))
  assert not os.path.exists(tmp_path / "run" / "checkpoints" / "final" / "0")


def test_win_rate_by_hand():
  from rlalign.rl import evaluation
  assert evaluation.win_rate([1, 0, 1, 0], [0, 0, 1, 1]) == (1 + 0.5 + 0.5 + 0) / 4
  assert evaluation.win_rate([0.2, 0.2], [0.2, 0.2]) == 0.5
  with pytest.raises(ValueError, match="different prompts"):
    evaluation.win_rate([1, 0], [1])
