"""GKD: the generalised JSD by hand on a 2-token, 3-word case, against TRL's
``GKDTrainer.generalized_jsd_loss`` on random masked logits, prepare with a fake teacher, and a
tiny student distilled from a tiny teacher through the real update."""

import math
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rlalign import objectives
from rlalign.models import transformer as tfm
from rlalign.objectives import base, gkd
from rlalign.rl import roles as roles_lib
from rlalign.rl import state as state_lib
from rlalign.rl import update


def _close(x, expected, tol=1e-6):
  chex.assert_trees_all_close(x, np.asarray(expected, np.float32), rtol=tol, atol=tol)


def _loss(hp, student_logits, teacher_logits, mask, tokens=None):
  outputs = {"policy": base.ModelOutputs(logits=jnp.asarray(student_logits, jnp.float32))}
  batch = {"mask": jnp.asarray(mask), "teacher_logits": jnp.asarray(teacher_logits, jnp.float32)}
  if tokens is not None:
    batch["completion_tokens"] = jnp.asarray(tokens, jnp.int32)
  return gkd.gkd_loss(hp, outputs, batch)


# ---------------------------------------------------------------- by hand

# One row of 2 real tokens and a padding token, over a 3-word vocabulary; logits are log-probs.
T_PROBS = [[0.5, 0.25, 0.25], [0.8, 0.1, 0.1], [0.98, 0.01, 0.01]]
S_PROBS = [[0.25, 0.5, 0.25], [0.4, 0.4, 0.2], [0.01, 0.01, 0.98]]
HAND_MASK = [[True, True, False]]  # the third (very different) position must not count
L = math.log


def _hand_logits():
  return np.log(np.array([S_PROBS])), np.log(np.array([T_PROBS]))


def _kl(p, q):
  return sum(a * L(a / b) for a, b in zip(p, q))


# Token 1: forward KL(T||S) = 0.5 ln 2 + 0.25 ln(1/2) = 0.25 ln 2; reverse = 0.25 ln 2 too.
# Token 2: forward = 0.8 ln 2 + 0.1 ln(1/4) + 0.1 ln(1/2) = 0.5 ln 2;
#          reverse = 0.4 ln(1/2) + 0.4 ln 4 + 0.2 ln 2 = 0.6 ln 2.
FORWARD = (0.25 * L(2) + 0.5 * L(2)) / 2
REVERSE = (0.25 * L(2) + 0.6 * L(2)) / 2
# beta = 0.5, M = (T + S) / 2: M1 = [0.375, 0.375, 0.25], M2 = [0.6, 0.25, 0.15].
JSD1 = 0.5 * (0.5 * L(0.5 / 0.375) + 0.25 * L(0.25 / 0.375)
              + 0.25 * L(0.25 / 0.375) + 0.5 * L(0.5 / 0.375))
JSD2 = 0.5 * (0.8 * L(0.8 / 0.6) + 0.1 * L(0.1 / 0.25) + 0.1 * L(0.1 / 0.15)
              + 0.4 * L(0.4 / 0.6) + 0.4 * L(0.4 / 0.25) + 0.2 * L(0.2 / 0.15))


@pytest.mark.parametrize("beta, expected", [
    (0.0, FORWARD), (1.0, REVERSE), (0.5, (JSD1 + JSD2) / 2),
])
def test_gkd_loss_by_hand(beta, expected):
  s, t = _hand_logits()
  loss, metrics = _loss(gkd.GKDConfig(beta=beta), s, t, HAND_MASK, tokens=[[0, 1, 2]])
  chex.assert_shape(loss, ())
  _close(loss, expected)
  _close(metrics["jsd"], expected)
  # The student's entropy and the teacher's log-prob of the sampled tokens, real tokens only.
  entropy = lambda p: -sum(a * L(a) for a in p)
  _close(metrics["entropy"], (entropy(S_PROBS[0]) + entropy(S_PROBS[1])) / 2)
  _close(metrics["teacher_logprob"], (L(0.5) + L(0.1)) / 2)


def test_generalized_jsd_limits_and_the_general_formula():
  s, t = _hand_logits()
  for beta in (0.1, 0.5, 0.9):
    per_token = np.asarray(gkd.generalized_jsd(jnp.asarray(s), jnp.asarray(t), beta))[0]
    for k in range(3):
      m = [beta * a + (1 - beta) * b for a, b in zip(T_PROBS[k], S_PROBS[k])]
      _close(per_token[k], beta * _kl(T_PROBS[k], m) + (1 - beta) * _kl(S_PROBS[k], m), 1e-5)
  # Small beta: JSD / beta -> forward KL(T || S); beta near 1: JSD / (1 - beta) -> reverse.
  eps = 1e-3
  near0 = np.asarray(gkd.generalized_jsd(jnp.asarray(s), jnp.asarray(t), eps))[0, :2] / eps
  near1 = np.asarray(gkd.generalized_jsd(jnp.asarray(s), jnp.asarray(t), 1 - eps))[0, :2] / eps
  fwd = [_kl(T_PROBS[k], S_PROBS[k]) for k in range(2)]
  rev = [_kl(S_PROBS[k], T_PROBS[k]) for k in range(2)]
  np.testing.assert_allclose(near0, fwd, rtol=2e-2)
  np.testing.assert_allclose(near1, rev, rtol=2e-2)
  # JSD(0.5) is bounded by log 2, even for near-disjoint distributions.
  assert float(gkd.generalized_jsd(jnp.asarray(s), jnp.asarray(t), 0.5)[0, 2]) < L(2)


def test_identical_distributions_give_zero_loss_and_gradient():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(2, 4, 5)) * 3
  mask = np.ones((2, 4), bool)
  for beta in (0.0, 0.3, 1.0):
    hp = gkd.GKDConfig(beta=beta, temperature=1.5)
    f = lambda s: _loss(hp, s, logits, mask)[0]
    value, grad = jax.value_and_grad(f)(jnp.asarray(logits, jnp.float32))
    _close(value, 0.0, 1e-6)
    _close(grad, np.zeros_like(logits), 1e-6)


def test_zero_teacher_probabilities_stay_finite():
  # A teacher that rules a word out (logit -inf): forward KL and the mixture stay finite.
  s = jnp.asarray([[[0.0, 1.0, -1.0]]])
  t = jnp.asarray([[[2.0, -jnp.inf, 0.0]]])
  for beta in (0.0, 0.5, 0.9):
    value, grad = jax.value_and_grad(
        lambda x: _loss(gkd.GKDConfig(beta=beta), x, t, [[True]])[0])(s)
    assert np.isfinite(float(value)) and np.all(np.isfinite(np.asarray(grad))), beta


def test_masked_tokens_get_no_gradient_and_an_empty_mask_is_zero():
  rng = np.random.default_rng(1)
  s, t = rng.normal(size=(2, 3, 4)), rng.normal(size=(2, 3, 4))
  mask = np.array([[1, 1, 0], [1, 0, 0]], bool)
  grad = np.asarray(jax.grad(lambda x: _loss(gkd.GKDConfig(), x, t, mask)[0])(
      jnp.asarray(s, jnp.float32)))
  assert np.all(grad[~mask] == 0) and np.all(np.abs(grad[mask]).sum(-1) > 0)
  loss, _ = _loss(gkd.GKDConfig(), s, t, np.zeros((2, 3), bool))
  _close(loss, 0.0)


# ---------------------------------------------------------------- against TRL


@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize("beta", [0.0, 0.5, 0.9, 1.0])
def test_matches_trl_generalized_jsd_loss(beta, temperature):
  os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
  torch = pytest.importorskip("torch")
  pytest.importorskip("trl")
  from trl.experimental.gkd import GKDTrainer

  rng = np.random.default_rng(int(beta * 10) + int(temperature))
  B, T, V = 3, 6, 11
  student = (rng.normal(size=(B, T, V)) * 2).astype(np.float32)
  teacher = (rng.normal(size=(B, T, V)) * 2).astype(np.float32)
  lengths = np.array([6, 2, 4])
  mask = np.arange(T)[None, :] < lengths[:, None]
  labels = np.where(mask, rng.integers(0, V, (B, T)), -100)
  expected = GKDTrainer.generalized_jsd_loss(
      torch.tensor(student, dtype=torch.float64), torch.tensor(teacher, dtype=torch.float64),
      labels=torch.tensor(labels), beta=beta, temperature=temperature).item()
  loss, metrics = _loss(gkd.GKDConfig(beta=beta, temperature=temperature), student, teacher,
                        mask)
  _close(loss, expected, 1e-5)
  _close(metrics["jsd"], expected, 1e-5)


# ---------------------------------------------------------------- prepare and registration


def test_gkd_registered_as_a_rollout_objective_reading_a_teacher():
  objective = objectives.get("gkd")
  assert objective.loss_fn is gkd.gkd_loss and objective.hparams is gkd.GKDConfig
  assert objective.batch == "rollouts" and objective.prepare is gkd.gkd_prepare
  assert dict(objective.trains) == {"policy": ("logits", "logprobs")}  # logprobs: sampler gap
  assert objective.reads == ("teacher",)
  assert not objective.needs_reference(gkd.GKDConfig())
  assert not objective.shuffles_pairs


@pytest.mark.parametrize("kwargs, match", [
    (dict(beta=-0.1), r"obj\.beta must be in \[0, 1\]"),
    (dict(beta=1.5), r"obj\.beta must be in \[0, 1\]"),
    (dict(beta=float("nan")), r"obj\.beta"),
    (dict(temperature=0.0), r"obj\.temperature must be positive"),
    (dict(aggregation="mean"), r"obj\.aggregation"),
])
def test_gkd_config_errors_name_the_key(kwargs, match):
  with pytest.raises(ValueError, match=match):
    gkd.GKDConfig(**kwargs).validate("obj")


def test_prepare_scores_the_teacher_slot_for_logits():
  asked = []
  teacher_logits = jnp.arange(2 * 3 * 4, dtype=jnp.float32).reshape(2, 3, 4)

  def score(slot, fields):
    asked.append((slot, tuple(fields)))
    return base.ModelOutputs(logits=teacher_logits)

  batch = {"mask": jnp.ones((2, 3), bool), "rewards": jnp.zeros(2)}
  out = gkd.gkd_prepare(gkd.GKDConfig(), batch, score, 2)
  assert asked == [("teacher", ("logits",))]
  assert set(out) == {"mask", "rewards", "teacher_logits"}
  chex.assert_trees_all_equal(out["teacher_logits"], teacher_logits)


# ---------------------------------------------------------------- a tiny student and teacher

TINY = tfm.ModelConfig(vocab_size=8, d_model=16, n_layers=1, n_heads=2, n_kv_heads=1,
                       head_dim=8, d_ff=32)


def _rollouts(B=4, P=3, T=4, seed=0):
  rng = np.random.default_rng(seed)
  lengths = np.array([4, 2, 3, 1])[:B]
  return {
      "prompt_tokens": jnp.asarray(rng.integers(1, 8, (B, P)), jnp.int32),
      "prompt_mask": jnp.asarray(np.array([[0, 1, 1], [1, 1, 1], [1, 1, 1], [0, 0, 1]])[:B],
                                 bool),
      "completion_tokens": jnp.asarray(rng.integers(1, 8, (B, T)), jnp.int32),
      "mask": jnp.asarray(np.arange(T)[None, :] < lengths[:, None]),
      "rewards": jnp.zeros(B),
      "advantages": jnp.zeros(B),
  }


def test_distilling_a_tiny_teacher_through_the_update():
  hp = gkd.GKDConfig(beta=0.5)
  objective = objectives.get("gkd")
  optimizer = optax.adam(3e-2)
  roles = {"policy": roles_lib.RoleSpec(TINY, optimizer), "teacher": roles_lib.RoleSpec(TINY)}
  student = tfm.init(TINY, jax.random.key(0))
  teacher = tfm.init(TINY, jax.random.key(1))
  frozen = {"teacher": teacher}
  data = _rollouts()

  def make_step(minibatches):
    binding = update.Binding(objective, hp, roles, {}, epochs=1, minibatches=minibatches)

    @jax.jit
    def step(state, rng):
      score = update.scorer(state_lib.params_of(state), frozen, binding, data)
      prepared, _ = update.prepare(binding, data, score, 2)
      return update.updates(state, prepared, rng, frozen, binding), prepared
    return step

  # The teacher's logits in the batch are the teacher's own, on the student's sequences, and
  # one full-batch update's loss is the JSD between the two models' full distributions.
  state = state_lib.init_state({"policy": student}, {"policy": optimizer})
  (_, first), prepared = make_step(1)(state, jax.random.key(2))
  expected = update.model_outputs(teacher, data, TINY, ("logits",)).logits
  _close(prepared["teacher_logits"], expected, 1e-5)
  student_logits = update.model_outputs(student, data, TINY, ("logits",)).logits
  whole, _ = _loss(hp, student_logits, expected, data["mask"])
  assert float(whole) > 1e-3
  _close(first["loss"], float(whole), 1e-5)
  _close(first["jsd"], float(whole), 1e-5)

  # A student that is the teacher has nothing to learn. (One update only: Adam would blow the
  # float32 round-off of a zero gradient up into a full-size step before a second one.)
  same = state_lib.init_state({"policy": jax.tree.map(jnp.copy, teacher)}, {"policy": optimizer})
  (_, metrics), _ = make_step(1)(same, jax.random.key(2))
  _close(metrics["jsd"], 0.0, 1e-6)

  step = make_step(2)

  for i in range(30):
    (state, metrics), _ = step(state, jax.random.key(3 + i))
  final = update.model_outputs(state["roles"]["policy"]["params"], data, TINY,
                               ("logits",)).logits
  after, _ = _loss(hp, final, expected, data["mask"])
  assert float(after) < 0.3 * float(whole), (float(whole), float(after))
  # The teacher was read, never trained.
  chex.assert_trees_all_close(frozen["teacher"], tfm.init(TINY, jax.random.key(1)))
