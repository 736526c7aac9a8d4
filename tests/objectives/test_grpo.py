"""Tests for the GRPO and SFT objectives and base.aggregate, against hand arithmetic."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlalign import objectives
from rlalign.objectives import base, grpo, sft


def _close(x, expected, tol=1e-6):
  chex.assert_trees_all_close(x, np.asarray(expected, np.float32), rtol=tol, atol=tol)


# ---------------------------------------------------------------- clipped_surrogate


def test_clipped_surrogate_symmetric_clip():
  # ratio, advantage -> loss = -min(r A, clip(r, 0.8, 1.2) A)
  ratios = np.array([1.1, 1.5, 0.5, 0.9, 0.5, 1.3, 1.0])
  advs = np.array([1.0, 1.0, 1.0, -2.0, -2.0, -2.0, 3.0])
  loss, clipped = grpo.clipped_surrogate(jnp.log(jnp.asarray(ratios, jnp.float32)),
                                         jnp.asarray(advs, jnp.float32), 0.2, 0.2)
  expected = [
      -1.1,        # A>0 inside the range: -r A
      -1.2,        # A>0, r above 1.2: -1.2 A (clipped)
      -0.5,        # A>0, r below 0.8: the unclipped r A is smaller, so -r A (not clipped)
      1.8,         # A<0 inside: -0.9 * -2
      1.6,         # A<0, r below 0.8: -0.8 * -2 (clipped)
      2.6,         # A<0, r above 1.2: -1.3 * -2 (not clipped: pessimistic side)
      -3.0,        # r = 1
  ]
  _close(loss, expected)
  np.testing.assert_array_equal(np.asarray(clipped),
                                [False, True, False, False, True, False, False])


def test_clipped_surrogate_clip_higher():
  # eps_low = 0.2, eps_high = 0.28 (DAPO): the range is [0.8, 1.28].
  ratios = np.array([1.25, 1.3, 0.75, 1.3, 0.5, 0.79])
  advs = np.array([1.0, 2.0, -1.0, -1.0, 1.0, -1.0])
  loss, clipped = grpo.clipped_surrogate(jnp.log(jnp.asarray(ratios, jnp.float32)),
                                         jnp.asarray(advs, jnp.float32), 0.2, 0.28)
  expected = [
      -1.25,       # A>0, r = 1.25 < 1.28: not clipped (would be -1.2 with eps_high=0.2)
      -1.28 * 2,   # A>0, r = 1.3 > 1.28: clipped at 1.28
      0.8,         # A<0, r = 0.75 < 0.8: -(0.8 * -1), clipped at the low side
      1.3,         # A<0, r = 1.3: the unclipped -1.3 is smaller, not clipped
      -0.5,        # A>0, r = 0.5: not clipped
      0.8,         # A<0, r = 0.79 < 0.8: clipped at 0.8
  ]
  _close(loss, expected)
  np.testing.assert_array_equal(np.asarray(clipped), [False, True, True, False, False, True])
  # The same inputs with a symmetric 0.2 clip the first token too.
  loss_sym, clipped_sym = grpo.clipped_surrogate(
      jnp.log(jnp.asarray(ratios, jnp.float32)), jnp.asarray(advs, jnp.float32), 0.2, 0.2)
  _close(loss_sym[:2], [-1.2, -1.2 * 2])
  np.testing.assert_array_equal(np.asarray(clipped_sym)[:2], [True, True])


# ---------------------------------------------------------------- grpo_loss on a [2, 3] batch

# Importance ratios, advantages and mask of a tiny batch. Token (0, 2) is masked out and
# would be clipped (ratio 2 > 1.2 with A > 0), so it must not count anywhere.
RATIOS = np.array([[1.1, 1.5, 2.0], [0.9, 0.5, 1.3]])
ADVS = np.array([1.0, -2.0])
MASK = np.array([[True, True, False], [True, True, True]])
OLD = np.array([[-1.0, -2.0, -0.5], [-1.5, -0.7, -3.0]])
# ref/pi per token, for the k3 estimate q - log q - 1.
REF_OVER_PI = np.array([[1.0, 2.0, 0.5], [0.5, 1.0, 4.0]])
ENTROPY = np.array([[0.5, 1.0, 2.0], [1.5, 0.2, 0.3]])
# Per-token clipped losses, by hand (eps 0.2):
#   row 0 (A=+1): r=1.1 -> -1.1; r=1.5 -> -1.2 (clipped); r=2.0 -> -1.2 (clipped, masked)
#   row 1 (A=-2): r=0.9 -> 1.8;  r=0.5 -> 1.6 (clipped); r=1.3 -> 2.6
PG_TOKEN = (-1.1 + -1.2 + 1.8 + 1.6 + 2.6) / 5
PG_SEQUENCE = ((-1.1 + -1.2) / 2 + (1.8 + 1.6 + 2.6) / 3) / 2


def _k3(q):
  return q - math.log(q) - 1


K3_TOKEN_MEAN = (_k3(1.0) + _k3(2.0) + _k3(0.5) + _k3(1.0) + _k3(4.0)) / 5
ENTROPY_TOKEN_MEAN = (0.5 + 1.0 + 1.5 + 0.2 + 0.3) / 5


def _batch():
  logp = jnp.asarray(OLD + np.log(RATIOS), jnp.float32)
  batch = {
      "mask": jnp.asarray(MASK),
      "old_logprobs": jnp.asarray(OLD, jnp.float32),
      "ref_logprobs": logp + jnp.log(jnp.asarray(REF_OVER_PI, jnp.float32)),
      "advantages": jnp.asarray(ADVS, jnp.float32),
  }
  return {"policy": base.ModelOutputs(logp, jnp.asarray(ENTROPY, jnp.float32))}, batch


def test_grpo_loss_token_aggregation_and_metrics():
  policy, batch = _batch()
  loss, metrics = grpo.grpo_loss(grpo.GRPOConfig(aggregation="token"), policy, batch)
  chex.assert_shape(loss, ())
  _close(loss, PG_TOKEN)  # = 3.7 / 5 = 0.74
  _close(PG_TOKEN, 0.74)
  _close(metrics["pg_loss"], PG_TOKEN)
  _close(metrics["clip_frac"], 2 / 5)  # tokens (0,1) and (1,1); the masked (0,2) is ignored
  _close(metrics["entropy"], ENTROPY_TOKEN_MEAN)
  _close(metrics["kl"], K3_TOKEN_MEAN, tol=1e-5)


def test_grpo_loss_sequence_aggregation():
  policy, batch = _batch()
  loss, _ = grpo.grpo_loss(grpo.GRPOConfig(aggregation="sequence"), policy, batch)
  _close(loss, PG_SEQUENCE)  # = (-1.15 + 2.0) / 2 = 0.425
  _close(PG_SEQUENCE, 0.425)


def test_grpo_loss_kl_coef_adds_beta_times_k3_mean():
  policy, batch = _batch()
  loss, _ = grpo.grpo_loss(grpo.GRPOConfig(kl_coef=0.1), policy, batch)
  expected = PG_TOKEN + 0.1 * (
      (0.0 + (2 - math.log(2) - 1) + (0.5 - math.log(0.5) - 1) + 0.0 + (4 - math.log(4) - 1))
      / 5)
  _close(loss, expected, tol=1e-5)
  # The sequence mode aggregates the KL term per sequence too.
  loss_seq, _ = grpo.grpo_loss(grpo.GRPOConfig(kl_coef=0.1, aggregation="sequence"), policy,
                               batch)
  expected_seq = ((-1.1 - 1.2 + 0.1 * (_k3(1.0) + _k3(2.0))) / 2
                  + (1.8 + 1.6 + 2.6 + 0.1 * (_k3(0.5) + _k3(1.0) + _k3(4.0))) / 3) / 2
  _close(loss_seq, expected_seq, tol=1e-5)


def test_grpo_loss_kl_coef_zero_ignores_reference():
  policy, batch = _batch()
  batch = dict(batch, ref_logprobs=batch["ref_logprobs"] + 5.0)
  loss, _ = grpo.grpo_loss(grpo.GRPOConfig(kl_coef=0.0), policy, batch)
  _close(loss, PG_TOKEN)


def test_grpo_loss_entropy_coef_subtracts_entropy_bonus():
  policy, batch = _batch()
  loss, _ = grpo.grpo_loss(grpo.GRPOConfig(entropy_coef=0.01), policy, batch)
  _close(loss, PG_TOKEN - 0.01 * (0.5 + 1.0 + 1.5 + 0.2 + 0.3) / 5)


def test_grpo_gradient_is_zero_on_masked_and_clipped_tokens():
  policy, batch = _batch()

  def loss_of(logp):
    outputs = {"policy": policy["policy"]._replace(logprobs=logp)}
    return grpo.grpo_loss(grpo.GRPOConfig(), outputs, batch)[0]

  grad = jax.grad(loss_of)(policy["policy"].logprobs)
  # d/dlogp of -r A / 5 is -r A / 5 on unclipped, unmasked tokens; clipped and masked get 0.
  expected = np.array([[-1.1 * 1.0 / 5, 0.0, 0.0],
                       [-0.9 * -2.0 / 5, 0.0, -1.3 * -2.0 / 5]])
  _close(grad, expected)
  assert np.asarray(grad)[0, 2] == 0.0 and np.asarray(grad)[0, 1] == 0.0
  assert np.asarray(grad)[1, 1] == 0.0


def test_grpo_registered_and_needs_reference():
  objective = objectives.get("grpo")
  assert objective.loss_fn is grpo.grpo_loss
  assert objective.hparams is grpo.GRPOConfig
  assert not objective.needs_reference(grpo.GRPOConfig(kl_coef=0.0))
  assert objective.needs_reference(grpo.GRPOConfig(kl_coef=0.05))
  assert "sft" in objectives.names()


# ---------------------------------------------------------------- base.aggregate


def test_aggregate_token_and_sequence_by_hand():
  per_token = jnp.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
  mask = jnp.array([[1, 1, 0], [1, 0, 0]])
  _close(base.aggregate(per_token, mask, "token"), (1 + 2 + 4) / 3)
  _close(base.aggregate(per_token, mask, "sequence"), ((1 + 2) / 2 + 4 / 1) / 2)
  # Boolean masks work the same way.
  _close(base.aggregate(per_token, mask.astype(bool), "token"), 7 / 3)


def test_aggregate_empty_mask_is_zero_not_nan():
  per_token = jnp.array([[1.0, 2.0]])
  mask = jnp.zeros((1, 2), bool)
  _close(base.aggregate(per_token, mask, "token"), 0.0)
  _close(base.aggregate(per_token, mask, "sequence"), 0.0)


def test_aggregate_unknown_mode_raises():
  with pytest.raises(ValueError, match="'mean'"):
    base.aggregate(jnp.zeros((1, 2)), jnp.ones((1, 2)), "mean")


# ---------------------------------------------------------------- GRPOConfig.validate


@pytest.mark.parametrize("kwargs, field", [
    (dict(clip_eps=0.0), "objective.clip_eps"),
    (dict(clip_eps=-0.1), "objective.clip_eps"),
    (dict(clip_eps_high=0.0), "objective.clip_eps_high"),
    (dict(kl_coef=-0.01), "objective.kl_coef"),
    (dict(kl_estimator="k4"), "objective.kl_estimator"),
    (dict(aggregation="mean"), "objective.aggregation"),
])
def test_grpo_config_validate_names_field(kwargs, field):
  with pytest.raises(ValueError) as e:
    grpo.GRPOConfig(**kwargs).validate()
  assert str(e.value).startswith(field + " "), str(e.value)


def test_grpo_config_validate_accepts_defaults_and_uses_prefix():
  grpo.GRPOConfig().validate()
  grpo.GRPOConfig(clip_eps_high=0.28, kl_coef=0.1, kl_estimator="k2",
                  aggregation="sequence").validate()
  with pytest.raises(ValueError, match=r"^rl\.objective\.kl_coef"):
    grpo.GRPOConfig(kl_coef=-1.0).validate("rl.objective")


# ---------------------------------------------------------------- SFT


def test_sft_loss_is_mean_nll_over_masked_tokens():
  logp = jnp.array([[-1.0, -2.0, -3.0], [-0.5, -4.0, -6.0]])
  entropy = jnp.array([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]])
  mask = jnp.array([[True, True, False], [True, False, False]])
  batch = {"mask": mask, "advantages": jnp.array([100.0, -100.0])}
  loss, metrics = sft.sft_loss(sft.SFTConfig(), {"policy": base.ModelOutputs(logp, entropy)},
                                 batch)
  _close(loss, (1.0 + 2.0 + 0.5) / 3)
  _close(metrics["nll"], (1.0 + 2.0 + 0.5) / 3)
  _close(metrics["entropy"], (0.1 + 0.2 + 0.4) / 3)
  assert objectives.get("sft").loss_fn is sft.sft_loss


# ---------------------------------------------------------------- Dr.GRPO: "constant" aggregation


def test_aggregate_constant_divides_the_sum_by_rows_times_a_fixed_length():
  per_token = jnp.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
  mask = jnp.array([[1, 1, 0], [1, 0, 0]])
  # Default constant: the mask's width, 3; the masked sum is 1 + 2 + 4 = 7 over 2 rows.
  _close(base.aggregate(per_token, mask, "constant"), 7 / (2 * 3))
  _close(base.aggregate(per_token, mask, "constant", 10), 7 / (2 * 10))
  # Unlike "token", it does not depend on how many tokens are real.
  longer = jnp.array([[1, 1, 1], [1, 0, 0]])
  _close(base.aggregate(per_token, longer, "constant"), 10 / 6)
  assert "constant" in base.AGGREGATIONS
  _close(base.aggregate(per_token, jnp.zeros((2, 3), bool), "constant"), 0.0)
  _close(base.aggregate(jnp.zeros((0, 3)), jnp.zeros((0, 3), bool), "constant"), 0.0)


def test_grpo_constant_aggregation_is_dr_grpo():
  policy, batch = _batch()
  pg_sum = -1.1 + -1.2 + 1.8 + 1.6 + 2.6  # the same per-token losses as above
  loss, _ = grpo.grpo_loss(grpo.GRPOConfig(aggregation="constant"), policy, batch)
  _close(loss, pg_sum / (2 * 3), tol=1e-5)  # B = 2 rows, T = 3 columns
  loss, _ = grpo.grpo_loss(grpo.GRPOConfig(aggregation="constant", loss_normalizer=4), policy,
                           batch)
  _close(loss, pg_sum / (2 * 4), tol=1e-5)
  # The loss_normalizer only matters for "constant".
  loss, _ = grpo.grpo_loss(grpo.GRPOConfig(loss_normalizer=4), policy, batch)
  _close(loss, PG_TOKEN)

  def loss_of(logp):
    outputs = {"policy": policy["policy"]._replace(logprobs=logp)}
    return grpo.grpo_loss(grpo.GRPOConfig(aggregation="constant", loss_normalizer=4), outputs,
                          batch)[0]

  # Every unclipped real token gets -r A / (B L), whatever its row's length.
  grad = jax.grad(loss_of)(policy["policy"].logprobs)
  _close(grad, np.array([[-1.1 * 1.0, 0.0, 0.0], [-0.9 * -2.0, 0.0, -1.3 * -2.0]]) / 8)


# ---------------------------------------------------------------- truncated importance sampling


def test_tis_weights_by_hand():
  old = np.array([[-1.0, -2.0, -0.5], [-1.5, -0.7, -3.0]])
  # pi_old / pi_sampler per token; (0, 2) is padding (its huge ratio must not matter).
  ratio = np.array([[0.5, 2.0, 1e6], [3.0, 1.0, 1.5]])
  mask = np.array([[True, True, False], [True, True, True]])
  batch = {"mask": jnp.asarray(mask), "old_logprobs": jnp.asarray(old, jnp.float32),
           "sampler_logprobs": jnp.asarray(old - np.log(ratio), jnp.float32)}
  _close(base.tis_weights(batch, 2.0), [[0.5, 2.0, 0.0], [2.0, 1.0, 1.5]], tol=1e-5)
  _close(base.tis_weights(batch, 10.0), [[0.5, 2.0, 0.0], [3.0, 1.0, 1.5]], tol=1e-5)
  # Under stop_gradient: no gradient reaches either log-prob.
  grad = jax.grad(lambda o: jnp.sum(base.tis_weights(dict(batch, old_logprobs=o), 2.0)))(
      batch["old_logprobs"])
  _close(grad, np.zeros((2, 3)))


def _tis_batch():
  policy, batch = _batch()
  # pi_old / pi_sampler, capped at 1.5 below: weights [[0.5, 1.5, -], [1.5, 1.0, 1.2]].
  ratio = np.array([[0.5, 2.0, 4.0], [1.6, 1.0, 1.2]])
  batch = dict(batch, sampler_logprobs=batch["old_logprobs"] - jnp.log(jnp.asarray(ratio)))
  return policy, batch


def test_grpo_tis_weights_the_policy_gradient_term():
  policy, batch = _tis_batch()
  hp = grpo.GRPOConfig(tis_cap=1.5, entropy_coef=0.01, kl_coef=0.1)
  loss, metrics = grpo.grpo_loss(hp, policy, batch)
  # The per-token clipped losses of PG_TOKEN, each times its weight; KL and entropy unweighted.
  pg = 0.5 * -1.1 + 1.5 * -1.2 + 1.5 * 1.8 + 1.0 * 1.6 + 1.2 * 2.6
  _close(metrics["pg_loss"], pg / 5, tol=1e-5)
  _close(loss, pg / 5 - 0.01 * ENTROPY_TOKEN_MEAN + 0.1 * K3_TOKEN_MEAN, tol=1e-5)
  _close(metrics["tis_weight_mean"], (0.5 + 1.5 + 1.5 + 1.0 + 1.2) / 5, tol=1e-5)
  _close(metrics["clip_frac"], 2 / 5)

  def loss_of(logp):
    outputs = {"policy": policy["policy"]._replace(logprobs=logp)}
    return grpo.grpo_loss(grpo.GRPOConfig(tis_cap=1.5), outputs, batch)[0]

  grad = jax.grad(loss_of)(policy["policy"].logprobs)
  _close(grad, np.array([[-0.5 * 1.1 * 1.0, 0.0, 0.0],
                         [-1.5 * 0.9 * -2.0, 0.0, -1.2 * 1.3 * -2.0]]) / 5, tol=1e-5)


def test_grpo_tis_off_or_on_policy_changes_nothing():
  policy, batch = _tis_batch()
  loss, metrics = grpo.grpo_loss(grpo.GRPOConfig(), policy, batch)
  _close(loss, PG_TOKEN)  # tis_cap = 0: the sampler's log-probs are not read
  assert "tis_weight_mean" not in metrics
  # Without rescore_old_logprobs, old_logprobs *are* the sampler's: every weight is 1.
  same = dict(batch, sampler_logprobs=batch["old_logprobs"])
  loss, metrics = grpo.grpo_loss(grpo.GRPOConfig(tis_cap=2.0), policy, same)
  _close(loss, PG_TOKEN)
  _close(metrics["tis_weight_mean"], 1.0)


def test_ppo_tis_weights_the_clipped_surrogate_only():
  from rlalign.objectives import ppo
  policy, batch = _tis_batch()
  values = jnp.zeros((2, 3))
  outputs = {"policy": policy["policy"], "critic": base.ModelOutputs(values=values)}
  batch = dict(batch, old_values=values, returns=jnp.ones((2, 3)))
  hp = ppo.PPOConfig(tis_cap=1.5, vf_coef=0.5, vf_clip=0.0)
  loss, metrics = ppo.ppo_loss(hp, outputs, batch)
  pg = 0.5 * -1.1 + 1.5 * -1.2 + 1.5 * 1.8 + 1.0 * 1.6 + 1.2 * 2.6
  _close(loss, pg / 5 + 0.5 * 0.5, tol=1e-5)  # value loss 0.5 (0 - 1)^2, unweighted
  _close(metrics["tis_weight_mean"], (0.5 + 1.5 + 1.5 + 1.0 + 1.2) / 5, tol=1e-5)
  loss_off, metrics_off = ppo.ppo_loss(ppo.PPOConfig(vf_coef=0.5, vf_clip=0.0), outputs, batch)
  _close(loss_off, PG_TOKEN + 0.25, tol=1e-5)
  assert "tis_weight_mean" not in metrics_off
  with pytest.raises(ValueError, match=r"^objective\.tis_cap"):
    ppo.PPOConfig(tis_cap=float("nan")).validate()


@pytest.mark.parametrize("kwargs, field", [
    (dict(clip_eps=float("nan")), "objective.clip_eps"),
    (dict(clip_eps_high=float("nan")), "objective.clip_eps_high"),
    (dict(kl_coef=float("nan")), "objective.kl_coef"),
    (dict(entropy_coef=float("nan")), "objective.entropy_coef"),
    (dict(loss_normalizer=-1), "objective.loss_normalizer"),
    (dict(loss_normalizer=2.5), "objective.loss_normalizer"),
    (dict(loss_normalizer=True), "objective.loss_normalizer"),
    (dict(tis_cap=-1.0), "objective.tis_cap"),
    (dict(tis_cap=float("nan")), "objective.tis_cap"),
])
def test_grpo_config_validate_rejects_nan_and_bad_new_fields(kwargs, field):
  with pytest.raises(ValueError) as e:
    grpo.GRPOConfig(**kwargs).validate()
  assert str(e.value).startswith(field + " "), str(e.value)


def test_grpo_config_accepts_dr_grpo_and_tis():
  grpo.GRPOConfig(aggregation="constant", loss_normalizer=512, tis_cap=2.0).validate()
