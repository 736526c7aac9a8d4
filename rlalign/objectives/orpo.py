"""ORPO: monolithic preference optimisation without a reference model (Hong et al. 2024,
"ORPO: Monolithic Preference Optimization without Reference Model").

Supervised fine-tuning on the chosen completions plus a penalty on the odds ratio of the
chosen over the rejected one, in a single stage. With P(y|x) the average per-token likelihood
of completion y, p = exp((1/|y|) sum_t log pi(y_t | x, y_<t)) over its masked tokens, the odds
of y are odds(y) = p / (1 - p), and

  loss = nll + lam * (-log sigma(log odds(c) - log odds(r)))

``nll`` is the negative log-likelihood of the chosen completions, a mean over all of the
minibatch's chosen masked tokens (each token weighs the same). ``lam`` is the paper's lambda.

log odds(y) = log p - log(1 - p), where log p = the average log-likelihood a <= 0 and
log(1 - p) = log(1 - exp(a)) is computed stably (log1p(-exp(a)) below -log 2, log(-expm1(a))
above: Maechler 2012). A completion the policy predicts with certainty has a = 0 in float32
(each log-softmax rounds to 0) and infinite odds, whose gradient is nan; a is therefore capped
at -1e-6 (p <= 1 - 1e-6) before the odds are taken, which changes nothing elsewhere.

TRL's ORPOTrainer computes the same odds-ratio term from the same average log-likelihoods, but
its NLL is a token mean over the whole chosen sequence, prompt tokens included; this one is
over the completion only, as the paper's L_SFT.

Metrics (means over pairs unless noted):

  nll                  the SFT term, as in the loss (token mean over chosen completions)
  odds_ratio_loss      -log sigma(log odds(c) - log odds(r)), before lam
  log_odds_ratio       log odds(c) - log odds(r)
  pref_accuracy        [log odds(c) > log odds(r)], equivalently [a(c) > a(r)]: the policy's
                       own preference by average log-likelihood
  chosen_avg_logprob   a(c), rejected_avg_logprob a(r)

Every minibatch keeps the pairs layout, chosen rows first, so :func:`base.split_pairs` finds
each pair's halves.
"""
from __future__ import annotations

import dataclasses
from typing import Mapping

import jax
import jax.numpy as jnp

from rlalign.objectives import base

# The largest average log-likelihood whose odds are taken: p <= 1 - 1e-6 (see the docstring).
MAX_AVG_LOGPROB = -1e-6


@dataclasses.dataclass(frozen=True)
class ORPOConfig:
  lam: float = 0.1  # the paper's lambda: weight of the odds-ratio term against the NLL

  def validate(self, prefix: str = "objective") -> None:
    if not self.lam >= 0:  # also rejects nan
      raise ValueError(f"{prefix}.lam must be >= 0, got {self.lam}")


def log1mexp(x: jax.Array) -> jax.Array:
  """log(1 - exp(x)) for x < 0, without cancellation at either end."""
  return jnp.where(x < -jnp.log(2.0), jnp.log1p(-jnp.exp(x)), jnp.log(-jnp.expm1(x)))


def log_odds(avg_logprob: jax.Array) -> jax.Array:
  """log(p / (1 - p)) with log p = ``avg_logprob`` (capped at :data:`MAX_AVG_LOGPROB`)."""
  a = jnp.minimum(avg_logprob, MAX_AVG_LOGPROB)
  return a - log1mexp(a)


def orpo_loss(hp: ORPOConfig, outputs: Mapping[str, base.ModelOutputs],
              batch: Mapping[str, jax.Array]):
  mask = batch["mask"]
  token_logp = outputs["policy"].logprobs.astype(jnp.float32)
  lengths = jnp.maximum(jnp.sum(mask, axis=-1).astype(jnp.float32), 1.0)
  avg_logp = base.sequence_sum(token_logp, mask) / lengths
  chosen_tokens, _ = base.split_pairs(token_logp)
  chosen_mask, _ = base.split_pairs(mask)
  nll = base.aggregate(-chosen_tokens, chosen_mask, "token")
  chosen_avg, rejected_avg = base.split_pairs(avg_logp)
  ratio = log_odds(chosen_avg) - log_odds(rejected_avg)
  odds_ratio_loss = -jnp.mean(jax.nn.log_sigmoid(ratio))
  metrics = {
      "nll": nll,
      "odds_ratio_loss": odds_ratio_loss,
      "log_odds_ratio": jnp.mean(ratio),
      "pref_accuracy": jnp.mean((ratio > 0).astype(jnp.float32)),
      "chosen_avg_logprob": jnp.mean(chosen_avg),
      "rejected_avg_logprob": jnp.mean(rejected_avg),
  }
  return nll + hp.lam * odds_ratio_loss, metrics


OBJECTIVE = base.register(base.Objective(
    name="orpo", hparams=ORPOConfig, loss_fn=orpo_loss, batch="pairs",
    trains={"policy": ("logprobs",)}))
