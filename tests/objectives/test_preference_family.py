"""IPO, SimPO, ORPO and KTO: each loss and its metrics by hand (numpy, written apart from the
implementations), gradients, config validation and registration; a few offline steps of a tiny
model through rl/offline.py; and peer checks against TRL 1.16.0 on identical random inputs.

The peers: ``trl.experimental.cpo.CPOTrainer.cpo_loss`` for SimPO, IPO and (fed the
reference-subtracted log-ratios) the existing DPO and cDPO; ``ORPOTrainer.odds_ratio_loss`` for
ORPO's odds-ratio term. Both are methods that read a few attributes of ``self``, called unbound
on a ``SimpleNamespace``. TRL's KTO loss is embedded in ``KTOTrainer._compute_loss`` and not
callable alone, so KTO is checked against the hand computation only.
"""

import math
import os
import types

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlalign import objectives
from rlalign.models import transformer as tfm
from rlalign.objectives import base, dpo, ipo, kto, orpo, simpo
from rlalign.rl import offline, update
from rlalign.rl import roles as roles_lib
from rlalign.rl import state as state_lib


def _close(x, expected, tol=1e-5):
  chex.assert_trees_all_close(x, np.asarray(expected, np.float32), rtol=tol, atol=tol)


def _log_sigmoid(x):
  return -np.log1p(np.exp(-np.asarray(x, np.float64)))


def _sigmoid(x):
  return 1.0 / (1.0 + np.exp(-np.asarray(x, np.float64)))


# ---------------------------------------------------------------- shared pairs data

# Two pairs (B = 2): rows 0, 1 chosen; rows 2, 3 their rejected completions. Masked tokens
# hold large values that would change every figure if they counted.
LOGP = np.array([[-0.5, -1.0, -9.0],    # pair 0 chosen:   sum -1.5, 2 tokens, mean -0.75
                 [-2.0, -0.5, -0.5],    # pair 1 chosen:   sum -3.0, 3 tokens, mean -1.0
                 [-1.0, -2.0, -7.0],    # pair 0 rejected: sum -3.0, 2 tokens, mean -1.5
                 [-0.2, -0.3, -5.0]])   # pair 1 rejected: sum -0.5, 2 tokens, mean -0.25
REF = np.array([[-1.0, -1.0, 4.0],      # sum -2.0
                [-1.0, -1.0, -1.0],     # sum -3.0
                [-1.0, -1.0, 3.0],      # sum -2.0
                [-0.5, -0.5, 8.0]])     # sum -1.0
MASK = np.array([[1, 1, 0], [1, 1, 1], [1, 1, 0], [1, 1, 0]], bool)
SUMS = np.array([-1.5, -3.0, -3.0, -0.5])
REF_SUMS = np.array([-2.0, -3.0, -2.0, -1.0])
COUNTS = np.array([2.0, 3.0, 2.0, 2.0])


def _pairs(loss_fn, hp, logp=LOGP, ref=REF, mask=MASK):
  outputs = {"policy": base.ModelOutputs(logprobs=jnp.asarray(logp, jnp.float32))}
  batch = {"mask": jnp.asarray(mask), "ref_logprobs": jnp.asarray(ref, jnp.float32)}
  return loss_fn(hp, outputs, batch)


def _grad(loss_fn, hp, logp=LOGP, **kw):
  g = jax.grad(lambda lp: _pairs(loss_fn, hp, logp=lp, **kw)[0])(jnp.asarray(logp, jnp.float32))
  g = np.asarray(g)
  assert np.all(np.isfinite(g))
  return g


def _per_row(values, mask=MASK):
  """A [2B] per-row gradient spread over each row's masked tokens, 0 on the rest."""
  return np.where(mask, np.asarray(values, np.float64)[:, None], 0.0)


# ---------------------------------------------------------------- IPO


def test_ipo_loss_and_metrics_by_hand():
  # Log-ratios: rows 0.5, 0.0, -1.0, 0.5; h = 0.5 - (-1.0) = 1.5 and 0.0 - 0.5 = -0.5.
  # tau = 0.5: target 1/(2 tau) = 1; loss ((1.5 - 1)^2 + (-0.5 - 1)^2) / 2 = 1.25.
  loss, metrics = _pairs(ipo.ipo_loss, ipo.IPOConfig(tau=0.5))
  chex.assert_shape(loss, ())
  _close(loss, 1.25)
  _close(metrics["margin"], (1.5 - 0.5) / 2)
  _close(metrics["reward_accuracy"], 0.5)
  _close(metrics["chosen_reward"], (0.5 + 0.0) / 2)
  _close(metrics["rejected_reward"], (-1.0 + 0.5) / 2)
  _close(metrics["pref_accuracy"], 0.5)
  _close(metrics["chosen_logprob"], (-1.5 - 3.0) / 2)
  _close(metrics["rejected_logprob"], (-3.0 - 0.5) / 2)


def test_ipo_length_normalized_by_hand():
  # Log-ratios over token counts: 0.5/2, 0/3, -1/2, 0.5/2, so h = 0.75 and -0.25.
  loss, metrics = _pairs(ipo.ipo_loss, ipo.IPOConfig(tau=0.5, length_normalized=True))
  _close(loss, ((0.75 - 1.0) ** 2 + (-0.25 - 1.0) ** 2) / 2)
  _close(metrics["margin"], (0.75 - 0.25) / 2)
  _close(metrics["chosen_reward"], 0.25 / 2)


def test_ipo_gradient_by_hand():
  # d loss / d h = 2 (h - target) / B: +0.5 for pair 0 (above target: chosen pushed down),
  # -1.5 for pair 1 (below target: chosen pushed up, rejected down).
  g = _grad(ipo.ipo_loss, ipo.IPOConfig(tau=0.5))
  _close(g, _per_row([0.5, -1.5, -0.5, 1.5]))
  assert g[1, 0] < 0 < g[3, 0]
  # Normalised, each token's share is divided by its row's count.
  g = _grad(ipo.ipo_loss, ipo.IPOConfig(tau=0.5, length_normalized=True))
  dh = 2 * (np.array([0.75, -0.25]) - 1.0) / 2
  _close(g, _per_row(np.concatenate([dh, -dh]) / COUNTS))


def test_ipo_minimum_is_the_target_margin():
  # Every pair exactly at h = 1/(2 tau): zero loss and zero gradient.
  tau = 0.25
  logp = LOGP.copy()
  logp[0, 0] += 2.0 - 1.5   # pair 0: h = 2.0
  logp[1, 0] += 2.0 + 0.5   # pair 1: h = 2.0
  loss, _ = _pairs(ipo.ipo_loss, ipo.IPOConfig(tau=tau), logp=logp)
  _close(loss, 0.0)
  _close(_grad(ipo.ipo_loss, ipo.IPOConfig(tau=tau), logp=logp), np.zeros_like(LOGP))


# ---------------------------------------------------------------- SimPO

SIMPO_BETA, SIMPO_GAMMA = 2.0, 0.5
# Rewards beta * mean log-prob: -1.5, -2.0, -3.0, -0.5; margins 1.5 and -1.5; minus gamma the
# logits are 1.0 and -2.0.
SIMPO_LOGITS = np.array([1.0, -2.0])


def test_simpo_loss_and_metrics_by_hand():
  hp = simpo.SimPOConfig(beta=SIMPO_BETA, gamma=SIMPO_GAMMA)
  loss, metrics = _pairs(simpo.simpo_loss, hp)
  _close(loss, -np.mean(_log_sigmoid(SIMPO_LOGITS)))
  _close(metrics["margin"], 0.0)
  _close(metrics["reward_accuracy"], 0.5)
  _close(metrics["chosen_reward"], (-1.5 - 2.0) / 2)
  _close(metrics["rejected_reward"], (-3.0 - 0.5) / 2)
  _close(metrics["pref_accuracy"], 0.5)  # sums: -1.5 > -3.0, -3.0 < -0.5
  _close(metrics["chosen_logprob"], (-1.5 - 3.0) / 2)


def test_simpo_ignores_the_reference():
  hp = simpo.SimPOConfig()
  a, _ = _pairs(simpo.simpo_loss, hp)
  b, _ = _pairs(simpo.simpo_loss, hp, ref=REF + 5.0)
  _close(a, b, tol=0)
  # Nor does it need one in the batch.
  outputs = {"policy": base.ModelOutputs(logprobs=jnp.asarray(LOGP, jnp.float32))}
  c, _ = simpo.simpo_loss(hp, outputs, {"mask": jnp.asarray(MASK)})
  _close(c, a, tol=0)


def test_simpo_label_smoothing_by_hand():
  eps = 0.2
  hp = simpo.SimPOConfig(beta=SIMPO_BETA, gamma=SIMPO_GAMMA, label_smoothing=eps)
  loss, _ = _pairs(simpo.simpo_loss, hp)
  expected = np.mean(-(1 - eps) * _log_sigmoid(SIMPO_LOGITS)
                     - eps * _log_sigmoid(-SIMPO_LOGITS))
  _close(loss, expected)


def test_simpo_gradient_by_hand():
  # d loss / d logit = -sigma(-logit) / B; d logit / d token = +-beta / |y|.
  g = _grad(simpo.simpo_loss, simpo.SimPOConfig(beta=SIMPO_BETA, gamma=SIMPO_GAMMA))
  dl = -_sigmoid(-SIMPO_LOGITS) / 2
  _close(g, _per_row(SIMPO_BETA * np.concatenate([dl, -dl]) / COUNTS))
  assert np.all(g[:2][MASK[:2]] < 0) and np.all(g[2:][MASK[2:]] > 0)


# ---------------------------------------------------------------- ORPO


def _np_log_odds(avg):
  avg = np.asarray(avg, np.float64)
  return avg - np.log(1.0 - np.exp(avg))


def test_orpo_loss_and_metrics_by_hand():
  lam = 0.3
  loss, metrics = _pairs(orpo.orpo_loss, orpo.ORPOConfig(lam=lam))
  # NLL: the chosen rows' five masked tokens, -(-0.5 - 1.0 - 2.0 - 0.5 - 0.5) / 5.
  nll = 4.5 / 5
  ratio = _np_log_odds([-0.75, -1.0]) - _np_log_odds([-1.5, -0.25])
  or_loss = -np.mean(_log_sigmoid(ratio))
  _close(metrics["nll"], nll)
  _close(metrics["odds_ratio_loss"], or_loss)
  _close(metrics["log_odds_ratio"], np.mean(ratio))
  _close(metrics["pref_accuracy"], 0.5)  # means: -0.75 > -1.5, -1.0 < -0.25
  _close(metrics["chosen_avg_logprob"], (-0.75 - 1.0) / 2)
  _close(metrics["rejected_avg_logprob"], (-1.5 - 0.25) / 2)
  _close(loss, nll + lam * or_loss)


def test_orpo_with_lam_zero_is_sft_on_the_chosen_completions():
  loss, _ = _pairs(orpo.orpo_loss, orpo.ORPOConfig(lam=0.0))
  _close(loss, 0.9)
  g = _grad(orpo.orpo_loss, orpo.ORPOConfig(lam=0.0))
  _close(g, np.where(MASK, -1.0 / 5, 0.0) * np.array([[1], [1], [0], [0]]))


def test_orpo_gradient_signs():
  g = _grad(orpo.orpo_loss, orpo.ORPOConfig(lam=1.0))
  assert np.all(g[:2][MASK[:2]] < 0)   # raise the chosen likelihood
  assert np.all(g[2:][MASK[2:]] > 0)   # lower the rejected one
  assert np.all(g[~MASK] == 0)


def test_orpo_is_finite_when_a_completion_is_certain():
  # float32 log-softmax rounds a confident token's log-prob to exactly 0; a row of them has
  # p = 1 and infinite odds, which the cap keeps finite, in value and gradient, both sides.
  logp = LOGP.copy()
  logp[0, :2] = 0.0
  logp[3, :2] = 0.0
  hp = orpo.ORPOConfig(lam=1.0)
  loss, metrics = _pairs(orpo.orpo_loss, hp, logp=logp)
  assert np.isfinite(float(loss)) and np.isfinite(float(metrics["log_odds_ratio"]))
  _grad(orpo.orpo_loss, hp, logp=logp)


@pytest.mark.parametrize("x", [-1e-6, -1e-3, -0.5, -math.log(2.0), -0.7, -5.0, -40.0, -100.0])
def test_log1mexp_matches_float64(x):
  _close(orpo.log1mexp(jnp.float32(x)), math.log(-math.expm1(x)), tol=1e-6)


# ---------------------------------------------------------------- KTO

# Four unpaired rows. Sequence log-ratios r = [1.0, 0.4, -0.6, 0.2] (masked tokens excluded),
# mean 0.25 = z0.
KTO_LOGP = np.array([[-0.5, -0.5, -9.0],
                     [-1.0, -0.6, -0.4],
                     [-2.0, -1.0, 6.0],
                     [-0.3, -0.5, -3.0]])
KTO_REF = np.array([[-1.0, -1.0, 2.0],
                    [-1.0, -1.0, -0.4],
                    [-1.2, -1.2, -6.0],
                    [-0.5, -0.5, 7.0]])
KTO_MASK = np.array([[1, 1, 0], [1, 1, 1], [1, 1, 0], [1, 1, 0]], bool)
KTO_R = np.array([1.0, 0.4, -0.6, 0.2])
KTO_LABELS = np.array([1.0, 0.0, 0.0, 1.0])


def _scored(hp, logp=KTO_LOGP, ref=KTO_REF, labels=KTO_LABELS, mask=KTO_MASK):
  outputs = {"policy": base.ModelOutputs(logprobs=jnp.asarray(logp, jnp.float32))}
  batch = {"mask": jnp.asarray(mask), "ref_logprobs": jnp.asarray(ref, jnp.float32),
           "labels": jnp.asarray(labels, jnp.float32)}
  return kto.kto_loss(hp, outputs, batch)


def _np_kto(r, labels, beta, wd, wu):
  z0 = max(0.0, float(np.mean(r)))
  des = labels > 0.5
  losses = np.where(des, wd * (1 - _sigmoid(beta * (r - z0))),
                    wu * (1 - _sigmoid(beta * (z0 - r))))
  return float(np.mean(losses)), z0


def test_kto_loss_and_metrics_by_hand():
  beta, wd, wu = 0.5, 1.5, 0.8
  np.testing.assert_allclose(np.where(KTO_MASK, KTO_LOGP - KTO_REF, 0).sum(-1), KTO_R,
                             atol=1e-12)
  loss, metrics = _scored(kto.KTOConfig(beta=beta, desirable_weight=wd, undesirable_weight=wu))
  expected, z0 = _np_kto(KTO_R, KTO_LABELS, beta, wd, wu)
  assert z0 == pytest.approx(0.25)
  _close(loss, expected)
  _close(metrics["kl"], 0.25)
  _close(metrics["desirable_reward"], beta * (1.0 + 0.2) / 2)
  _close(metrics["undesirable_reward"], beta * (0.4 - 0.6) / 2)
  # r - z0 = 0.75 (desirable: right), 0.15 (undesirable: wrong), -0.85 (undesirable: right),
  # -0.05 (desirable: wrong).
  _close(metrics["reward_accuracy"], 0.5)
  _close(metrics["desirable_rate"], 0.5)


def test_kto_reference_point_is_clipped_at_zero():
  # Shift every reference up by 1 per token: r = [-1.0, -2.6, -2.6, -1.8], mean < 0, z0 = 0.
  ref = KTO_REF + np.where(KTO_MASK, 1.0, 0.0)
  r = KTO_R - KTO_MASK.sum(-1)
  loss, metrics = _scored(kto.KTOConfig(beta=0.5), ref=ref)
  expected, z0 = _np_kto(r, KTO_LABELS, 0.5, 1.0, 1.0)
  assert z0 == 0.0
  _close(metrics["kl"], 0.0)
  _close(loss, expected)


def test_kto_rewards_of_a_missing_label_are_zero():
  _, metrics = _scored(kto.KTOConfig(), labels=np.ones(4))
  _close(metrics["undesirable_reward"], 0.0)
  _close(metrics["desirable_reward"], 0.1 * np.mean(KTO_R))
  _close(metrics["desirable_rate"], 1.0)


def test_kto_gradient_by_hand_with_z0_held_fixed():
  # z0 is under stop_gradient: each row's gradient is its own term's only.
  beta, wd, wu = 0.5, 1.5, 0.8
  hp = kto.KTOConfig(beta=beta, desirable_weight=wd, undesirable_weight=wu)
  g = jax.grad(lambda lp: _scored(hp, logp=lp)[0])(jnp.asarray(KTO_LOGP, jnp.float32))
  g = np.asarray(g)
  assert np.all(np.isfinite(g))
  z0 = 0.25
  des = KTO_LABELS > 0.5
  s_d = _sigmoid(beta * (KTO_R - z0))
  s_u = _sigmoid(beta * (z0 - KTO_R))
  per_row = np.where(des, -wd * beta * s_d * (1 - s_d), wu * beta * s_u * (1 - s_u)) / 4
  _close(g, _per_row(per_row, KTO_MASK))
  assert np.all(g[des][KTO_MASK[des]] < 0) and np.all(g[~des][KTO_MASK[~des]] > 0)


# ---------------------------------------------------------------- registration and validation


@pytest.mark.parametrize("name, module, loss_fn, config, batch, reference", [
    ("ipo", ipo, ipo.ipo_loss, ipo.IPOConfig, "pairs", True),
    ("simpo", simpo, simpo.simpo_loss, simpo.SimPOConfig, "pairs", False),
    ("orpo", orpo, orpo.orpo_loss, orpo.ORPOConfig, "pairs", False),
    ("kto", kto, kto.kto_loss, kto.KTOConfig, "scored", True),
])
def test_registered(name, module, loss_fn, config, batch, reference):
  objective = objectives.get(name)
  assert objective is module.OBJECTIVE
  assert objective.loss_fn is loss_fn and objective.hparams is config
  assert objective.batch == batch
  assert dict(objective.trains) == {"policy": ("logprobs",)}
  assert objective.needs_reference(config()) is reference
  config().validate("phases.p.objective")  # the defaults are valid


NAN = float("nan")


@pytest.mark.parametrize("config, kwargs, key", [
    (ipo.IPOConfig, dict(tau=0.0), "tau"),
    (ipo.IPOConfig, dict(tau=-1.0), "tau"),
    (ipo.IPOConfig, dict(tau=NAN), "tau"),
    (simpo.SimPOConfig, dict(beta=0.0), "beta"),
    (simpo.SimPOConfig, dict(beta=NAN), "beta"),
    (simpo.SimPOConfig, dict(gamma=-0.1), "gamma"),
    (simpo.SimPOConfig, dict(gamma=NAN), "gamma"),
    (simpo.SimPOConfig, dict(gamma=float("inf")), "gamma"),
    (simpo.SimPOConfig, dict(label_smoothing=0.5), "label_smoothing"),
    (simpo.SimPOConfig, dict(label_smoothing=-0.1), "label_smoothing"),
    (simpo.SimPOConfig, dict(label_smoothing=NAN), "label_smoothing"),
    (orpo.ORPOConfig, dict(lam=-0.1), "lam"),
    (orpo.ORPOConfig, dict(lam=NAN), "lam"),
    (kto.KTOConfig, dict(beta=0.0), "beta"),
    (kto.KTOConfig, dict(beta=NAN), "beta"),
    (kto.KTOConfig, dict(desirable_weight=0.0), "desirable_weight"),
    (kto.KTOConfig, dict(desirable_weight=NAN), "desirable_weight"),
    (kto.KTOConfig, dict(undesirable_weight=-1.0), "undesirable_weight"),
    (kto.KTOConfig, dict(undesirable_weight=NAN), "undesirable_weight"),
])
def test_config_errors_name_the_key(config, kwargs, key):
  with pytest.raises(ValueError, match=rf"phases\.p\.objective\.{key} must"):
    config(**kwargs).validate("phases.p.objective")


# ---------------------------------------------------------------- peer checks against TRL


def _trl(module):
  os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
  pytest.importorskip("torch")
  return pytest.importorskip(module)


def _random_pairs(seed, B=6, T=9):
  """Float32 [2B, T] log-probs, references and a ragged mask with >= 1 token per row."""
  rng = np.random.default_rng(seed)
  logp = -rng.exponential(0.8, size=(2 * B, T)).astype(np.float32)
  ref = (logp + rng.normal(0, 0.3, size=(2 * B, T))).astype(np.float32)
  ref = np.minimum(ref, 0.0)
  lengths = rng.integers(1, T + 1, size=2 * B)
  mask = np.arange(T)[None, :] < lengths[:, None]
  logp[~mask] = rng.normal(0, 5, size=(~mask).sum())  # garbage beyond the mask
  return logp, ref, mask


def _np_sums(x, mask):
  return np.where(mask, x.astype(np.float64), 0.0).sum(-1)


def _cpo(torch, loss_type, chosen, rejected, dtype, beta, label_smoothing=0.0, gamma=0.0):
  from trl.experimental.cpo import CPOTrainer
  self = types.SimpleNamespace(alpha=0.0, loss_type=loss_type, beta=beta, simpo_gamma=gamma,
                               label_smoothing=label_smoothing,
                               accelerator=types.SimpleNamespace(device="cpu"))
  losses, _, _ = CPOTrainer.cpo_loss(self, torch.tensor(chosen, dtype=dtype),
                                     torch.tensor(rejected, dtype=dtype))
  return float(losses.mean())


DTYPES = ("float32", "float64")
TOL = dict(rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("beta, eps", [(0.1, 0.0), (0.7, 0.0), (0.5, 0.2)])
def test_dpo_and_cdpo_match_trl(dtype, beta, eps):
  # CPO's "sigmoid" loss on (log pi - log pi_ref) is DPO's; label smoothing is cDPO.
  torch = _trl("torch")
  _trl("trl.experimental.cpo")
  logp, ref, mask = _random_pairs(0)
  ratio = _np_sums(logp, mask) - _np_sums(ref, mask)
  half = len(ratio) // 2
  expected = _cpo(torch, "sigmoid", ratio[:half], ratio[half:], getattr(torch, dtype), beta,
                  label_smoothing=eps)
  loss, _ = _pairs(dpo.dpo_loss, dpo.DPOConfig(beta=beta, label_smoothing=eps), logp=logp,
                   ref=ref, mask=mask)
  np.testing.assert_allclose(float(loss), expected, **TOL)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tau, normalized", [(0.1, False), (0.5, False), (0.1, True),
                                             (1.0, True)])
def test_ipo_matches_trl(dtype, tau, normalized):
  # CPO's "ipo" loss (logits - 1/(2 beta))^2, with beta playing tau, fed the log-ratios.
  torch = _trl("torch")
  _trl("trl.experimental.cpo")
  logp, ref, mask = _random_pairs(1)
  ratio = _np_sums(logp, mask) - _np_sums(ref, mask)
  if normalized:
    ratio = ratio / mask.sum(-1)
  half = len(ratio) // 2
  expected = _cpo(torch, "ipo", ratio[:half], ratio[half:], getattr(torch, dtype), tau)
  loss, _ = _pairs(ipo.ipo_loss, ipo.IPOConfig(tau=tau, length_normalized=normalized),
                   logp=logp, ref=ref, mask=mask)
  np.testing.assert_allclose(float(loss), expected, **TOL)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("beta, gamma, eps", [(2.0, 0.5, 0.0), (2.5, 1.4, 0.0),
                                              (10.0, 3.0, 0.0), (2.0, 0.5, 0.1)])
def test_simpo_matches_trl(dtype, beta, gamma, eps):
  # CPO's "simpo" loss fed average per-token log-probs; its simpo_gamma is the paper's gamma.
  torch = _trl("torch")
  _trl("trl.experimental.cpo")
  logp, ref, mask = _random_pairs(2)
  avg = _np_sums(logp, mask) / mask.sum(-1)
  half = len(avg) // 2
  expected = _cpo(torch, "simpo", avg[:half], avg[half:], getattr(torch, dtype), beta,
                  label_smoothing=eps, gamma=gamma)
  loss, _ = _pairs(simpo.simpo_loss,
                   simpo.SimPOConfig(beta=beta, gamma=gamma, label_smoothing=eps),
                   logp=logp, ref=ref, mask=mask)
  np.testing.assert_allclose(float(loss), expected, **TOL)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("lam", [0.1, 0.5])
def test_orpo_matches_trl(dtype, lam):
  # TRL's odds_ratio_loss returns beta * log sigma(log odds ratio), the negative of the
  # weighted odds-ratio term; its NLL (over prompt and completion) is left aside, and the
  # NLL over the chosen completions is computed here in numpy.
  torch = _trl("torch")
  orpo_trl = _trl("trl.experimental.orpo")
  logp, ref, mask = _random_pairs(3)
  # Include very confident rows (average log-prob near 0), where log(1 - p) cancels badly.
  logp[0, :] = np.where(mask[0], -1e-4, logp[0])
  logp[-1, :] = np.where(mask[-1], -3e-3, logp[-1])
  avg = _np_sums(logp, mask) / mask.sum(-1)
  half = len(avg) // 2
  self = types.SimpleNamespace(beta=lam, accelerator=types.SimpleNamespace(device="cpu"))
  dt = getattr(torch, dtype)
  losses, _, _, _, log_odds = orpo_trl.ORPOTrainer.odds_ratio_loss(
      self, torch.tensor(avg[:half], dtype=dt), torch.tensor(avg[half:], dtype=dt))
  nll = -_np_sums(logp[:half], mask[:half]).sum() / mask[:half].sum()
  loss, metrics = _pairs(orpo.orpo_loss, orpo.ORPOConfig(lam=lam), logp=logp, ref=ref,
                         mask=mask)
  np.testing.assert_allclose(float(metrics["odds_ratio_loss"]) * lam, -float(losses.mean()),
                             **TOL)
  np.testing.assert_allclose(float(metrics["log_odds_ratio"]), float(log_odds), **TOL)
  np.testing.assert_allclose(float(loss), nll - float(losses.mean()), **TOL)


def test_trl_peer_parametrisations():
  # The attributes the peer calls above set are the ones the pinned TRL reads: a guard
  # against a TRL upgrade renaming or reinterpreting them.
  _trl("torch")
  cpo = _trl("trl.experimental.cpo")
  orpo_trl = _trl("trl.experimental.orpo")
  import inspect
  src = inspect.getsource(cpo.CPOTrainer.cpo_loss)
  assert "self.simpo_gamma / self.beta" in src and "self.label_smoothing" in src
  assert "1 / (2 * self.beta)" in src
  src = inspect.getsource(orpo_trl.ORPOTrainer.odds_ratio_loss)
  assert "self.beta * ratio" in src


# ---------------------------------------------------------------- offline steps of a tiny model

TINY = tfm.ModelConfig(vocab_size=8, d_model=16, n_layers=1, n_heads=2, n_kv_heads=1,
                       head_dim=8, d_ff=32)


def _offline_batch(kind):
  prompt = {"prompt_tokens": jnp.array([[0, 1, 5], [1, 4, 6]], jnp.int32),
            "prompt_mask": jnp.array([[0, 1, 1], [1, 1, 1]], bool)}
  if kind == "pairs":
    return {**prompt,
            "chosen_tokens": jnp.array([[3, 4, 2], [5, 2, 0]], jnp.int32),
            "chosen_mask": jnp.array([[1, 1, 1], [1, 1, 0]], bool),
            "rejected_tokens": jnp.array([[3, 7, 2], [6, 6, 2]], jnp.int32),
            "rejected_mask": jnp.array([[1, 1, 1], [1, 1, 1]], bool)}
  return {**prompt,
          "completion_tokens": jnp.array([[3, 4, 2], [6, 6, 2]], jnp.int32),
          "completion_mask": jnp.array([[1, 1, 1], [1, 1, 0]], bool),
          "labels": jnp.array([1.0, 0.0])}


@pytest.mark.parametrize("name, hp, start", [
    ("ipo", ipo.IPOConfig(tau=0.5), 1.0),               # h = 0: (0 - 1)^2
    ("simpo", simpo.SimPOConfig(), None),
    ("orpo", orpo.ORPOConfig(lam=0.5), None),
    ("kto", kto.KTOConfig(beta=0.5, desirable_weight=1.5), 0.5 * (1.5 + 1.0) / 2),  # r = 0
])
def test_offline_steps_reduce_the_loss(name, hp, start):
  cfg = TINY
  objective = objectives.get(name)
  params = tfm.init(cfg, jax.random.key(0, impl="rbg"))
  optimizer = state_lib.make_optimizer(state_lib.OptimizerConfig(learning_rate=3e-2))
  roles = {"policy": roles_lib.RoleSpec(cfg, optimizer)}
  reference = None
  if objective.needs_reference(hp):
    roles["reference"] = roles_lib.RoleSpec(cfg)
    reference = "reference"
  spec = offline.OfflineSpec(update.Binding(objective, hp, roles, {}), reference=reference)
  spec.check()
  step = offline.make_offline_step(spec)
  state = state_lib.init_state({"policy": jax.tree.map(jnp.copy, params)},
                               roles_lib.optimizers(roles))
  frozen = {"reference": params} if reference else {}
  batch = _offline_batch(objective.batch)
  losses = []
  for _ in range(6):
    state, metrics = step(state, batch, jax.random.key(1), frozen)
    losses.append(float(metrics["loss"]))
  assert all(np.isfinite(losses)), losses
  if start is not None:
    assert losses[0] == pytest.approx(start, abs=1e-5)
  assert losses[-1] < losses[0], losses
