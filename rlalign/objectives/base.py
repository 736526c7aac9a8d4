"""The objective interface and its registry.

An objective is a small pure loss over one minibatch::

  loss_fn(hparams, outputs: Mapping[slot, ModelOutputs], batch) -> (loss, metrics)

``outputs`` holds what the *current* params of each trained slot say about the batch's
sequences (``outputs["policy"].logprobs``, ``outputs["critic"].values``...), computed for the
fields the objective declares in ``trains``. ``batch`` holds what was fixed before the update:
``mask`` [B, T] over completion tokens, plus whatever the batch kind and ``prepare`` add.

Batch kinds, and what ``batch`` holds for each:

  rollouts        online samples: ``old_logprobs`` [B, T], ``ref_logprobs`` [B, T] (when the
                  run has a reference), ``rewards`` [B], ``advantages`` [B] or [B, T]
  demonstrations  prompt -> demonstration pairs: only ``mask``
  pairs           preference pairs stacked as 2B rows, chosen first (see :func:`split_pairs`);
                  ``ref_logprobs`` [2B, T] when the objective needs a reference
  scored          prompt + completion with a label or score per row: ``labels`` [B]

A rollouts objective may rearrange its batch in ``prepare`` (``pairs_layout``: best and worst
sample of each group as a preference pair), and name a default advantage estimator.

``prepare(hparams, batch, score, group_size) -> batch`` (or ``-> (batch, metrics)``) runs once
per iteration between the rollout and the updates (GAE from a critic's values, say); its metrics
are whole-batch scalars logged beside the update's. ``score(slot, fields)`` evaluates that
slot's role on the batch's sequences under ``stop_gradient``, with its params as they were
before the update. ``group_size`` is the static number of samples per prompt of a rollouts batch
(each group's rows contiguous), 1 for offline batches.

A slot is the objective's name for a model ("policy", "critic"); a phase binds slots to the
run's roles, by default to the role of the same name. A new objective is one file in this
package that calls :func:`register`; a config names it in ``objective.name`` and its other keys
are type-checked against ``hparams``.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, Mapping, NamedTuple, Optional, Tuple, Type

import jax
import jax.numpy as jnp

from rlalign import registry

Metrics = Dict[str, jax.Array]

# What a loss (or ``prepare``) may ask a model for.
FIELDS = ("logprobs", "entropy", "values", "scores", "hidden", "logits", "step_scores")
BATCH_KINDS = ("rollouts", "demonstrations", "pairs", "scored")


class ModelOutputs(NamedTuple):
  """One model's view of a batch of prompt + completion sequences; unrequested fields are None."""
  logprobs: Optional[jax.Array] = None  # [B, T] log pi(completion token | prefix)
  entropy: Optional[jax.Array] = None   # [B, T] entropy of each predictive distribution
  values: Optional[jax.Array] = None    # [B, T] scalar head at the state before each token
  scores: Optional[jax.Array] = None    # [B] scalar head at the row's last real token
  hidden: Optional[jax.Array] = None    # [B, T, d] final hidden states before each token
  logits: Optional[jax.Array] = None    # [B, T, V] next-token logits (distillation)
  # [B, T] scalar head just after each completion token: a process reward model's score of
  # the completion up to and including token t.
  step_scores: Optional[jax.Array] = None


@dataclasses.dataclass(frozen=True)
class Objective:
  name: str
  hparams: Type[Any]  # a frozen dataclass of the objective's settings
  loss_fn: Callable[[Any, Mapping[str, ModelOutputs], Mapping[str, jax.Array]],
                    Tuple[jax.Array, Metrics]]
  batch: str = "rollouts"
  # Slots updated by the gradient, and the fields the loss reads from each.
  trains: Mapping[str, Tuple[str, ...]] = dataclasses.field(
      default_factory=lambda: {"policy": ("logprobs", "entropy")})
  needs_reference: Callable[[Any], bool] = lambda hparams: False
  prepare: Optional[Callable[..., Mapping[str, jax.Array]]] = None
  # Frozen slots that ``prepare`` scores besides the trained ones (a distillation teacher);
  # the phase's step is given their roles.
  reads: Tuple[str, ...] = ()
  # ``prepare`` rearranges a rollouts batch into the pairs layout (2B rows, chosen first), so
  # minibatches shuffle whole pairs as for a "pairs" batch (online DPO).
  pairs_layout: bool = False
  # The advantage estimator a rollout phase uses unless its config names one.
  advantage: str = "group_norm"
  # The loss reads [B, T] per-token advantages as given (``per_token``), so step rewards of
  # a process reward model can train it; False where prepare replaces them (PPO's GAE) or
  # the ratio is per sequence (GSPO).
  token_advantages: bool = False
  # The loss never reads the sampler's log-probs as the policy's own (no ratio, no old
  # policy), so a phase may sample from another role (``sample_from``: online DPO's rounds
  # on data of the model as the round began).
  any_sampler: bool = False

  @property
  def shuffles_pairs(self) -> bool:
    return self.batch == "pairs" or self.pairs_layout

  def __post_init__(self):
    if self.batch not in BATCH_KINDS:
      raise ValueError(f"objective {self.name!r}: batch kind {self.batch!r} is not one of "
                       f"{BATCH_KINDS}")
    for slot, fields in self.trains.items():
      unknown = set(fields) - set(FIELDS)
      if unknown:
        raise ValueError(f"objective {self.name!r}: slot {slot!r} asks for unknown outputs "
                         f"{sorted(unknown)}; known: {FIELDS}")
    overlap = set(self.reads) & set(self.trains)
    if overlap:
      raise ValueError(f"objective {self.name!r}: slots {sorted(overlap)} are both read and "
                       "trained")
    if self.batch == "rollouts" and "policy" not in self.trains:
      raise ValueError(f"objective {self.name!r}: rollout objectives train the 'policy' slot, "
                       "which samples")


_REGISTRY: registry.Registry[Objective] = registry.Registry("objective")


def register(objective: Objective) -> Objective:
  return _REGISTRY.register(objective.name, objective)


def get(name: str) -> Objective:
  return _REGISTRY.get(name)


def names() -> Tuple[str, ...]:
  return _REGISTRY.names()


def aggregate(per_token: jax.Array, mask: jax.Array, mode: str,
              constant: Optional[float] = None) -> jax.Array:
  """Reduces a [B, T] per-token loss to a scalar.

  "token": every completion token in the minibatch weighs the same (DAPO).
  "sequence": mean over sequences of each sequence's token mean (the GRPO paper's 1/|o_i|).
  "constant": the masked sum over the minibatch divided by B * ``constant``, a fixed length
  that does not depend on the samples (Dr.GRPO, Liu et al. 2025, "Understanding R1-Zero-Like
  Training": 1/|o_i| biases GRPO towards long wrong answers and short right ones). ``constant``
  None: the mask's width T, which is ``sampling.max_new_tokens`` unless the phase trains at
  ``rl.response_buckets`` (then it is the bucket's width, which changes from step to step).
  """
  mask = mask.astype(per_token.dtype)
  if mode == "token":
    return jnp.sum(per_token * mask) / jnp.maximum(jnp.sum(mask), 1.0)
  if mode == "sequence":
    per_seq = jnp.sum(per_token * mask, axis=-1) / jnp.maximum(jnp.sum(mask, axis=-1), 1.0)
    return jnp.mean(per_seq)
  if mode == "constant":
    denominator = mask.shape[0] * (mask.shape[-1] if constant is None else constant)
    if not denominator:  # no rows (or no columns): nothing to average, as "token" gives 0
      return jnp.zeros((), per_token.dtype)
    return jnp.sum(per_token * mask) / denominator
  raise ValueError(f"unknown loss aggregation {mode!r}; expected one of {list(AGGREGATIONS)}")


AGGREGATIONS = ("token", "sequence", "constant")


def check_choice(prefix: str, name: str, value: str, choices) -> None:
  """Raises ValueError naming ``prefix.name`` unless ``value`` is one of ``choices``."""
  if value not in choices:
    raise ValueError(f"{prefix}.{name} must be one of {list(choices)}, got {value!r}")


def per_token(advantages: jax.Array) -> jax.Array:
  """[B] sequence advantages broadcast over tokens; [B, T] per-token ones pass through."""
  return advantages[:, None] if advantages.ndim == 1 else advantages


def split_pairs(x: jax.Array) -> Tuple[jax.Array, jax.Array]:
  """The chosen and rejected halves of a pairs batch's 2B rows."""
  half = x.shape[0] // 2
  return x[:half], x[half:]


def sequence_sum(per_token_values: jax.Array, mask: jax.Array) -> jax.Array:
  """Sum over each row's masked tokens, [B]: a sequence's log-probability from token ones."""
  return jnp.sum(per_token_values * mask.astype(per_token_values.dtype), axis=-1)


def tis_weights(batch: Mapping[str, jax.Array], cap: float) -> jax.Array:
  """Truncated importance sampling weights (Yao et al. 2025, "Your Efficient RL Framework
  Secretly Brings You Off-Policy RL Training"), [B, T]::

    w_t = stop_gradient(min(pi_old(y_t) / pi_sampler(y_t), cap))

  from the batch's ``old_logprobs`` and ``sampler_logprobs``; 0 at padding. They correct for
  the sampler and the learner disagreeing about the same params (bfloat16, other kernels,
  another engine) and differ from 1 only when pi_old is the learner's, i.e. with the phase's
  ``rescore_old_logprobs=True``; otherwise old_logprobs *are* the sampler's.
  """
  mask = batch["mask"].astype(bool)
  log_ratio = batch["old_logprobs"] - batch["sampler_logprobs"]
  weights = jnp.minimum(jnp.exp(jnp.where(mask, log_ratio, 0.0)), cap)
  return jax.lax.stop_gradient(jnp.where(mask, weights, 0.0))


def masked_row_mean(per_token_values: jax.Array, mask: jax.Array) -> jax.Array:
  """Mean over each row's masked tokens, [B]; 0 for a row with none."""
  mask = mask.astype(per_token_values.dtype)
  return sequence_sum(per_token_values, mask) / jnp.maximum(jnp.sum(mask, axis=-1), 1.0)


def check_tis_cap(prefix: str, cap: float) -> None:
  """TIS's cap C: 0 (off) or >= 1; below 1 it would only shrink every on-policy weight."""
  if not (cap == 0 or cap >= 1):
    raise ValueError(f"{prefix}.tis_cap must be 0 (off) or >= 1, got {cap}")
