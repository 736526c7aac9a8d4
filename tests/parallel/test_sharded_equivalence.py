"""A sharded RL iteration equals the single-device one, on meshes of 8 fake CPU devices."""
import jax
import numpy as np
import optax
import pytest

from rlalign import objectives
from rlalign.data import pipeline, tokenizer as tok_lib
from rlalign.models import transformer as tfm
from rlalign.parallel import mesh as mesh_lib
from rlalign.parallel.sharding import ShardingPlan
from rlalign.rl import iteration
from rlalign.rl import state as state_lib
from rlalign.sampling import SamplingConfig

TOKENIZER = tok_lib.CharTokenizer(tok_lib.ADDITION_ALPHABET)
DATA = pipeline.DataConfig(data_dir="unused", max_prompt_len=8, max_answer_len=4)
MODEL = tfm.ModelConfig(vocab_size=16, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
                        head_dim=8, d_ff=64)
PROBLEMS = [("1+2=", "3"), ("12+3=", "42"), ("5+5=", "01"), ("9+91=", "001"),
            ("7+1=", "8"), ("33+1=", "43"), ("4+4=", "8"), ("2+22=", "42")]


def make_batch():
  rows = [pipeline.encode_example({"prompt": p.encode(), "answer": a.encode(),
                                   "demonstration": b""}, TOKENIZER, DATA) for p, a in PROBLEMS]
  return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def make_spec():
  objective = objectives.get("grpo")
  return iteration.single_policy_spec(
      MODEL, SamplingConfig(max_new_tokens=4, stop_tokens=(TOKENIZER.eos_id,)),
      iteration.RLConfig(batch_size=16, group_size=2, minibatches=2, epochs=2),
      objective, objective.hparams(kl_coef=0.05),
      # Plain SGD: Adam's per-element normalisation would amplify float-rounding differences
      # in near-zero gradients and blur what this test checks, the sharded program itself.
      optax.sgd(0.5))


def policy_of(state):
  return state["roles"]["policy"]["params"]


def state_layout(plan, param_sh, abstract, spec):
  return plan.train_state({"policy": param_sh}, {"policy": abstract}, spec.optimizers)


def run_single_device(spec, batch, rng):
  params = tfm.init(MODEL, jax.random.key(0))
  reference = tfm.init(MODEL, jax.random.key(1))
  state = state_lib.init_state({"policy": params}, spec.optimizers)
  rollouts = jax.jit(lambda p, b, r: iteration.rollout(p, b, r, spec))(params, batch, rng)
  state, metrics = iteration.make_rl_step(spec)(state, batch, rng, {"reference": reference})
  return jax.device_get((rollouts["completion_tokens"], state, metrics))


@pytest.fixture(scope="module")
def single_device():
  assert jax.device_count() == 8, "tests/conftest.py should give 8 fake CPU devices"
  spec, batch, rng = make_spec(), make_batch(), jax.random.key(7)
  return spec, batch, rng, run_single_device(spec, batch, rng)


# Every axis at once in the default suite; one axis at a time in the slow set.
@pytest.mark.parametrize("ici", [pytest.param((8, 1, 1), marks=pytest.mark.slow), (2, 2, 2),
                                 pytest.param((1, 4, 2), marks=pytest.mark.slow)])
def test_sharded_iteration_matches_single_device(single_device, ici):
  spec, batch, rng, (tokens, expected_state, expected_metrics) = single_device
  plan = ShardingPlan(mesh_lib.make_mesh(mesh_lib.MeshConfig(ici=ici)), mesh_lib.DEFAULT_RULES)
  abstract = tfm.abstract_params(MODEL)
  param_sh = plan.params(tfm.logical_axes(MODEL), abstract)
  state_sh = state_layout(plan, param_sh, abstract, spec)
  params = jax.jit(lambda r: tfm.init(MODEL, r), out_shardings=param_sh)(jax.random.key(0))
  reference = jax.jit(lambda r: tfm.init(MODEL, r), out_shardings=param_sh)(jax.random.key(1))
  state = jax.jit(lambda p: state_lib.init_state({"policy": p}, spec.optimizers),
                  out_shardings=state_sh)(params)
  # The layout is really split: q is cut over fsdp x tensor where those axes exist.
  q_shards = policy_of(state)["layers"]["q"].sharding.shard_shape((2, 32, 4, 8))
  assert q_shards == (2, 32 // ici[1], 4 // ici[2], 8)

  sharded_batch = plan.put_process_batch(batch)
  layout = iteration.StepLayout(plan, state_sh, plan.batch(batch), {"reference": param_sh})
  sample = iteration.jit_with_rules(lambda p, b, r: iteration.rollout(p, b, r, spec), plan)
  sharded_tokens = sample(policy_of(state), sharded_batch, rng)["completion_tokens"]
  np.testing.assert_array_equal(jax.device_get(sharded_tokens), tokens)

  step = iteration.make_rl_step(spec, layout=layout)
  state, metrics = step(state, sharded_batch, rng, {"reference": reference})
  for key in ("loss", "pg_loss", "kl", "entropy", "reward", "grad_norm"):
    np.testing.assert_allclose(metrics[key], expected_metrics[key], rtol=1e-5, atol=1e-6,
                               err_msg=key)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               jax.device_get(policy_of(state)), policy_of(expected_state))
  # Outputs keep the layout they were given: nothing was silently gathered.
  assert policy_of(state)["layers"]["q"].sharding == param_sh["layers"]["q"]


def test_mesh_errors_name_the_numbers():
  with pytest.raises(ValueError, match=r"covers 12 devices, but there are 8"):
    mesh_lib.make_mesh(mesh_lib.MeshConfig(ici=(3, 2, 2)))
  with pytest.raises(ValueError, match=r"fixed sizes \(product 3\) do not divide the 8"):
    mesh_lib.make_mesh(mesh_lib.MeshConfig(ici=(-1, 3, 1)))
  with pytest.raises(ValueError, match=r"mesh axis 'model', which is not in mesh.axes"):
    mesh_lib.MeshConfig(rules=(("mlp", ("model",)),)).validate()
  plan = ShardingPlan(mesh_lib.make_mesh(mesh_lib.MeshConfig(ici=(4, 2, 1))),
                      mesh_lib.DEFAULT_RULES)
  with pytest.raises(ValueError, match=r"rl.batch \(6\) must divide .* 8 ways"):
    plan.check_batch(6, "rl.batch")
  bad_model = tfm.ModelConfig(vocab_size=16, n_heads=4, n_kv_heads=1)
  plan = ShardingPlan(mesh_lib.make_mesh(mesh_lib.MeshConfig(ici=(4, 1, 2))),
                      mesh_lib.DEFAULT_RULES)
  with pytest.raises(ValueError, match=r"param layers/k: dimension 2 \(kv_heads\) of size 1"):
    plan.params(tfm.logical_axes(bad_model), tfm.abstract_params(bad_model))
  rules = tuple(r for r in mesh_lib.DEFAULT_RULES if r[0] != "mlp")
  with pytest.raises(KeyError, match=r"param layers/\w+: logical axis .mlp. has no sharding rule"):
    ShardingPlan(plan.mesh, rules).params(tfm.logical_axes(bad_model),
                                          tfm.abstract_params(bad_model))


def test_sampler_on_its_own_mesh_matches_single_device(single_device):
  """FSDP learner (1, 8, 1); tensor-parallel sampler (4, 1, 2) over the same devices."""
  spec, batch, rng, (tokens, expected_state, expected_metrics) = single_device
  learner = ShardingPlan(mesh_lib.make_mesh(mesh_lib.MeshConfig(ici=(1, 8, 1))),
                         mesh_lib.DEFAULT_RULES)
  sampler_plan = ShardingPlan(mesh_lib.make_mesh(mesh_lib.MeshConfig(ici=(4, 1, 2))),
                              mesh_lib.DEFAULT_RULES)
  abstract = tfm.abstract_params(MODEL)
  param_sh = learner.params(tfm.logical_axes(MODEL), abstract)
  sampler_sh = sampler_plan.params(tfm.logical_axes(MODEL), abstract)
  state_sh = state_layout(learner, param_sh, abstract, spec)
  init = lambda seed: jax.jit(lambda r: tfm.init(MODEL, r), out_shardings=param_sh)(
      jax.random.key(seed))
  state = jax.jit(lambda p: state_lib.init_state({"policy": p}, spec.optimizers),
                  out_shardings=state_sh)(init(0))
  layout = iteration.StepLayout(
      learner, state_sh, learner.batch(batch), {"reference": param_sh},
      sampler=iteration.SamplerLayout(sampler_plan, sampler_sh, sampler_plan.batch(batch)))
  step = iteration.make_rl_step(spec, layout=layout)
  state, metrics = step(state, learner.put_process_batch(batch), rng, {"reference": init(1)})
  assert metrics["reshard_s"] > 0
  for key in ("loss", "kl", "reward", "grad_norm"):
    np.testing.assert_allclose(metrics[key], expected_metrics[key], rtol=1e-5, atol=1e-6,
                               err_msg=key)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               jax.device_get(policy_of(state)), policy_of(expected_state))
  # The learner keeps its FSDP layout; the sampler's copy was tensor-parallel.
  assert policy_of(state)["layers"]["q"].sharding == param_sh["layers"]["q"]
  assert sampler_sh["layers"]["q"].shard_shape((2, 32, 4, 8)) == (2, 32, 2, 8)
