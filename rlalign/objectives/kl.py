"""Per-token estimators of KL(pi_theta || pi_ref) from samples of pi_theta (Schulman, 2020)."""
from __future__ import annotations

import jax
import jax.numpy as jnp


def k1(logprobs: jax.Array, ref_logprobs: jax.Array) -> jax.Array:
  """log(pi/pi_ref): unbiased, high variance, can be negative."""
  return logprobs - ref_logprobs


def k2(logprobs: jax.Array, ref_logprobs: jax.Array) -> jax.Array:
  """0.5 log(pi/pi_ref)^2: biased, low variance, non-negative."""
  return 0.5 * jnp.square(logprobs - ref_logprobs)


def k3(logprobs: jax.Array, ref_logprobs: jax.Array) -> jax.Array:
  """pi_ref/pi - log(pi_ref/pi) - 1: unbiased, non-negative; the estimator GRPO uses."""
  log_ratio = ref_logprobs - logprobs
  return jnp.exp(log_ratio) - log_ratio - 1.0


ESTIMATORS = {"k1": k1, "k2": k2, "k3": k3}


def estimate(name: str, logprobs: jax.Array, ref_logprobs: jax.Array) -> jax.Array:
  if name not in ESTIMATORS:
    raise ValueError(f"unknown KL estimator {name!r}; expected one of {sorted(ESTIMATORS)}")
  return ESTIMATORS[name](logprobs, ref_logprobs)
