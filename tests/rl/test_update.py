"""The shared update: minibatch orders, and that pairs objectives see whole pairs."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rlalign import objectives
from rlalign.models import transformer as tfm
from rlalign.rl import roles as roles_lib
from rlalign.rl import state as state_lib
from rlalign.rl import update


@pytest.mark.parametrize("epochs, minibatches", [(1, 1), (2, 2), (1, 4)])
def test_pairs_minibatches_hold_whole_pairs_chosen_first(epochs, minibatches):
  B = 8  # pairs: 16 rows, chosen 0..7 then rejected 8..15
  orders = np.asarray(update.minibatch_orders(2 * B, jax.random.key(0), epochs, minibatches,
                                              pairs=True))
  assert orders.shape == (epochs * minibatches, 2 * B // minibatches)
  for mb in orders:
    chosen, rejected = np.split(mb, 2)
    assert (chosen < B).all() and (rejected == chosen + B).all()
  for e in range(epochs):  # each epoch visits every row once
    rows = orders[e * minibatches:(e + 1) * minibatches].reshape(-1)
    assert sorted(rows) == list(range(2 * B))
  plain = np.asarray(update.minibatch_orders(2 * B, jax.random.key(0), epochs, minibatches))
  assert sorted(plain[:minibatches].reshape(-1)) == list(range(2 * B))


def test_a_pairs_objective_sees_each_pair_through_minibatches():
  """Bradley-Terry over 2 minibatches: the first update's loss equals the hand loss of the
  pairs that minibatch holds, which it would not if rows were shuffled apart."""
  model = tfm.ModelConfig(vocab_size=16, d_model=32, n_layers=1, n_heads=2, n_kv_heads=1,
                          head_dim=16, d_ff=64, heads=("scalar",))
  objective = objectives.get("bradley_terry")
  binding = update.Binding(objective, objective.hparams(),
                           {"rm": roles_lib.RoleSpec(model, optax.sgd(0.0))},
                           {"model": "rm"}, epochs=1, minibatches=2)
  rng = np.random.default_rng(0)
  B, P, T = 8, 3, 4
  data = {"prompt_tokens": jnp.asarray(np.tile(rng.integers(3, 16, (B, P)), (2, 1)), jnp.int32),
          "prompt_mask": jnp.ones((2 * B, P), bool),
          "completion_tokens": jnp.asarray(rng.integers(3, 16, (2 * B, T)), jnp.int32),
          "mask": jnp.ones((2 * B, T), bool)}
  params = tfm.init(model, jax.random.key(1))
  params["scalar_head"]["w"] = params["scalar_head"]["w"] * 10  # spread the scores
  scores = np.asarray(update.model_outputs(params, data, model, ("scores",)).scores)
  state = state_lib.init_state({"rm": params}, {"rm": optax.sgd(0.0)})
  key = jax.random.key(2)
  _, metrics = jax.jit(lambda s, d, r: update.updates(s, d, r, {}, binding))(state, data, key)
  orders = np.asarray(update.minibatch_orders(2 * B, key, 1, 2, pairs=True))
  expected = []
  for mb in orders:  # learning rate 0: both updates see the initial scores
    chosen, rejected = np.split(mb, 2)
    gap = scores[chosen] - scores[rejected]
    expected.append(np.mean(np.log1p(np.exp(-gap))))
  np.testing.assert_allclose(float(metrics["loss"]), np.mean(expected), rtol=1e-5)
