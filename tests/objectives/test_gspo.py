"""GSPO: the sequence-level ratio, clip and gradient against hand arithmetic."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlalign import objectives
from rlalign.objectives import base, gspo


def _close(x, expected, tol=1e-6):
  chex.assert_trees_all_close(x, np.asarray(expected, np.float32), rtol=tol, atol=tol)


MASK = np.array([[True, True, False], [True, True, True], [True, False, False]])
# log pi - log pi_old per token; the padding (0, 2), (2, 1), (2, 2) carries junk.
LOG_RATIO = np.array([[0.1, 0.3, 5.0], [-0.2, -0.1, -0.15], [0.05, -4.0, 9.0]])
OLD = np.array([[-1.0, -2.0, -0.5], [-1.5, -0.7, -3.0], [-0.2, -1.0, -2.0]])
ADVS = np.array([1.0, -2.0, 0.5])
ENTROPY = np.array([[0.5, 1.0, 9.0], [1.5, 0.2, 0.3], [0.7, 9.0, 9.0]])
# Sequence log-ratios by hand: the mean over each row's real tokens.
SEQ_LOG_RATIO = np.array([(0.1 + 0.3) / 2, (-0.2 - 0.1 - 0.15) / 3, 0.05])  # .2, -.15, .05


def _inputs(log_ratio=LOG_RATIO, advs=ADVS):
  logp = jnp.asarray(OLD + log_ratio, jnp.float32)
  batch = {"mask": jnp.asarray(MASK), "old_logprobs": jnp.asarray(OLD, jnp.float32),
           "sampler_logprobs": jnp.asarray(OLD, jnp.float32),
           "ref_logprobs": jnp.asarray(OLD, jnp.float32),
           "advantages": jnp.asarray(advs, jnp.float32)}
  return {"policy": base.ModelOutputs(logp, jnp.asarray(ENTROPY, jnp.float32))}, batch


def test_sequence_log_ratio_is_the_masked_token_mean():
  policy, batch = _inputs()
  _close(gspo.sequence_log_ratio(policy["policy"].logprobs, batch["old_logprobs"],
                                 batch["mask"]), SEQ_LOG_RATIO, tol=1e-6)
  # A row with no real token has ratio 1.
  _close(gspo.sequence_log_ratio(jnp.ones((1, 2)), jnp.zeros((1, 2)), jnp.zeros((1, 2), bool)),
         [0.0])


def test_gspo_loss_clips_at_the_sequence_level_by_hand():
  policy, batch = _inputs()
  hp = gspo.GSPOConfig(clip_eps=0.1, clip_eps_high=0.2)  # s in [0.9, 1.2]
  loss, metrics = gspo.gspo_loss(hp, policy, batch)
  s = np.exp(SEQ_LOG_RATIO)  # 1.2214, 0.8607, 1.0513
  per_seq = [-1.2 * 1.0,          # A > 0, s > 1.2: clipped at 1.2
             -(0.9 * -2.0),       # A < 0, s < 0.9: clipped at 0.9
             -(s[2] * 0.5)]       # inside the range
  chex.assert_shape(loss, ())
  _close(loss, np.mean(per_seq), tol=1e-5)
  _close(metrics["pg_loss"], np.mean(per_seq), tol=1e-5)
  _close(metrics["clip_frac"], 2 / 3)
  _close(metrics["entropy"], (0.5 + 1.0 + 1.5 + 0.2 + 0.3 + 0.7) / 6)
  # The reference here is pi_old, so ref/pi = exp(-log ratio) per token, through k3.
  q = np.exp(-LOG_RATIO)[MASK]
  _close(metrics["kl"], np.mean(q - np.log(q) - 1), tol=1e-5)
  assert set(metrics) == {"pg_loss", "clip_frac", "kl", "entropy"}


def test_gspo_default_clip_range_is_3e4_4e4():
  hp = gspo.GSPOConfig()
  assert (hp.clip_eps, hp.clip_eps_high) == (3e-4, 4e-4)
  # Sequence log-ratios 2e-4 (inside), 5e-4 (above 1 + 4e-4) and -5e-4 (below 1 - 3e-4).
  log_ratio = np.array([[2e-4, 2e-4, 0.0], [5e-4, 5e-4, 5e-4], [-5e-4, 0.0, 0.0]])
  policy, batch = _inputs(log_ratio, np.array([1.0, 1.0, -1.0]))
  loss, metrics = gspo.gspo_loss(hp, policy, batch)
  _close(metrics["clip_frac"], 2 / 3)
  _close(loss, (-math.exp(2e-4) - (1 + 4e-4) + (1 - 3e-4)) / 3, tol=1e-6)


def test_gspo_does_not_clip_a_token_whose_sequence_ratio_is_inside():
  # One token's ratio e^0.5 would be clipped by GRPO; the row's mean 0.5 - 0.5 = 0 is not.
  log_ratio = np.array([[0.5, -0.5, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
  policy, batch = _inputs(log_ratio)
  _, metrics = gspo.gspo_loss(gspo.GSPOConfig(clip_eps=0.2, clip_eps_high=0.2), policy, batch)
  _close(metrics["clip_frac"], 0.0)


def test_gspo_gradient_is_the_sequence_level_formula():
  policy, batch = _inputs()
  hp = gspo.GSPOConfig(clip_eps=0.1, clip_eps_high=0.2)

  def loss_of(logp):
    return gspo.gspo_loss(hp, {"policy": policy["policy"]._replace(logprobs=logp)}, batch)[0]

  grad = jax.grad(loss_of)(policy["policy"].logprobs)
  # d/dlogp_it of -(1/B) s_i A_i = -(1/B) A_i s_i / |y_i| on an unclipped row's real tokens;
  # rows 0 and 1 are clipped (zero gradient), row 2 has one real token.
  s = np.exp(SEQ_LOG_RATIO)
  expected = np.zeros((3, 3))
  expected[2, 0] = -ADVS[2] * s[2] / 1 / 3
  _close(grad, expected, tol=1e-6)
  # With a wide range nothing clips: every real token of row i gets -A_i s_i / (|y_i| B).
  wide = gspo.GSPOConfig(clip_eps=0.9, clip_eps_high=9.0)
  grad = jax.grad(lambda lp: gspo.gspo_loss(
      wide, {"policy": policy["policy"]._replace(logprobs=lp)}, batch)[0])(
          policy["policy"].logprobs)
  lengths = MASK.sum(1)
  expected = np.where(MASK, (-ADVS * s / lengths / 3)[:, None], 0.0)
  _close(grad, expected, tol=1e-6)


def test_gspo_kl_and_entropy_are_averaged_per_sequence():
  policy, batch = _inputs()
  ref_over_pi = np.array([[2.0, 0.5, 7.0], [1.0, 4.0, 0.25], [3.0, 7.0, 7.0]])
  batch = dict(batch, ref_logprobs=policy["policy"].logprobs
               + jnp.log(jnp.asarray(ref_over_pi, jnp.float32)))
  k3 = ref_over_pi - np.log(ref_over_pi) - 1
  hp = gspo.GSPOConfig(clip_eps=0.1, clip_eps_high=0.2, kl_coef=0.1, entropy_coef=0.01)
  loss, metrics = gspo.gspo_loss(hp, policy, batch)
  base_loss, _ = gspo.gspo_loss(gspo.GSPOConfig(clip_eps=0.1, clip_eps_high=0.2), policy,
                                batch)
  row_mean = lambda x: np.sum(np.where(MASK, x, 0), 1) / MASK.sum(1)
  _close(loss, base_loss + 0.1 * row_mean(k3).mean() - 0.01 * row_mean(ENTROPY).mean(),
         tol=1e-5)
  _close(metrics["kl"], k3[MASK].mean(), tol=1e-5)


def test_gspo_tis_weight_is_per_sequence():
  policy, batch = _inputs()
  # log pi_old - log pi_sampler per token; sequence means 0.5, -0.3 and 2.0 (capped at 2).
  gap = np.array([[0.4, 0.6, 9.0], [-0.3, -0.2, -0.4], [2.0, 9.0, 9.0]])
  batch = dict(batch, sampler_logprobs=batch["old_logprobs"] - jnp.asarray(gap, jnp.float32))
  hp = gspo.GSPOConfig(clip_eps=0.1, clip_eps_high=0.2, tis_cap=2.0)
  loss, metrics = gspo.gspo_loss(hp, policy, batch)
  w = np.array([math.exp(0.5), math.exp(-0.3), 2.0])
  s = np.exp(SEQ_LOG_RATIO)
  per_seq = np.array([-1.2 * 1.0, 0.9 * 2.0, -(s[2] * 0.5)])
  _close(loss, np.mean(w * per_seq), tol=1e-5)
  _close(metrics["tis_weight_mean"], w.mean(), tol=1e-5)


def test_gspo_rejects_per_token_advantages():
  policy, batch = _inputs()
  with pytest.raises(ValueError, match="one advantage per sequence"):
    gspo.gspo_loss(gspo.GSPOConfig(), policy, dict(batch, advantages=jnp.zeros((3, 3))))


@pytest.mark.parametrize("field,value", [
    ("clip_eps", 0.0), ("clip_eps", -1e-4), ("clip_eps", float("nan")),
    ("clip_eps_high", 0.0), ("clip_eps_high", float("nan")),
    ("kl_coef", -0.1), ("kl_coef", float("nan")),
    ("tis_cap", -1.0), ("tis_cap", float("nan")),
    ("entropy_coef", float("nan")), ("kl_estimator", "k4"),
])
def test_gspo_config_validate_names_the_field(field, value):
  with pytest.raises(ValueError, match=rf"^rl\.objective\.{field} "):
    gspo.GSPOConfig(**{field: value}).validate("rl.objective")


def test_gspo_registered():
  gspo.GSPOConfig().validate()
  objective = objectives.get("gspo")
  assert objective.loss_fn is gspo.gspo_loss and objective.hparams is gspo.GSPOConfig
  assert objective.batch == "rollouts" and objective.advantage == "group_norm"
  assert objective.prepare is None
  assert not objective.needs_reference(gspo.GSPOConfig())
  assert objective.needs_reference(gspo.GSPOConfig(kl_coef=0.01))
