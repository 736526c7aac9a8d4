"""The unbiased pass@k estimator (Chen et al. 2021, "Evaluating Large Language Models Trained
on Code") over G samples per prompt.

With n samples of which c are correct, pass@k = 1 - C(n - c, k) / C(n, k): one minus the chance
that a k-subset drawn without replacement holds no correct sample.
"""
from __future__ import annotations

from typing import Dict, Sequence

import jax
import jax.numpy as jnp


def _check_k(k: int, num_samples: int) -> None:
  if not 1 <= k <= num_samples:
    raise ValueError(f"pass@{k} needs 1 <= k <= {num_samples}, the samples per prompt")


def pass_at_k(correct: jax.Array, k: int) -> jax.Array:
  """Unbiased pass@k per prompt, [P], from ``correct`` [P, G] (nonzero counts as correct).

  C(n - c, k) / C(n, k) is written as the product of its k ratios,
  prod_{i<k} (n - c - i) / (n - i), each in [0, 1], so nothing overflows as factorials
  would. Once i reaches n - c a ratio is 0 and so is the product: fewer than k wrong samples
  means every k-subset holds a correct one. ``k`` must be static under jit.
  """
  n = correct.shape[-1]
  _check_k(k, n)
  c = jnp.sum(correct.astype(bool), axis=-1).astype(jnp.float32)
  i = jnp.arange(k, dtype=jnp.float32)
  # Clipped at 0 so the ratios past i = n - c are 0 rather than negative.
  ratios = jnp.maximum(n - c[..., None] - i, 0.0) / (n - i)
  return 1.0 - jnp.prod(ratios, axis=-1)


def pass_at_ks(correct: jax.Array, ks: Sequence[int]) -> Dict[str, jax.Array]:
  """``{"pass@k": mean over prompts of pass_at_k(correct, k)}`` for each k in ``ks``."""
  return {f"pass@{k}": jnp.mean(pass_at_k(correct, k)) for k in ks}
