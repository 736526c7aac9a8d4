"""GKD: on-policy distillation with the generalised Jensen-Shannon divergence (Agarwal et al.
2024, "On-Policy Distillation of Language Models: Learning from Self-Generated Mistakes").

The student (slot ``policy``) samples the rollouts; ``prepare`` scores the frozen teacher
(slot ``teacher``) on those same sequences and stores its next-token logits in the batch as
``teacher_logits`` [B, T, V]. The loss is, at every real completion token, a divergence
between the teacher's and the student's whole next-token distributions (not just the sampled
token), averaged over the minibatch's real tokens. As in the paper, no gradient flows through
the sampling: the samples are data, and only the student's predictive distribution is trained.
This is GKD with the paper's student-data fraction lambda = 1 (every sequence on-policy).

With T = softmax(teacher_logits / tau), S = softmax(student_logits / tau) and
M = beta T + (1 - beta) S, the paper's eq. (1) with P = teacher, Q = student::

  JSD(beta)(T || S) = beta KL(T || M) + (1 - beta) KL(S || M)

Which limit is which: as beta -> 0, M -> S and JSD(beta) ~ beta KL(T || S), the *forward* KL
(mode covering, what supervised KD minimises); as beta -> 1, M -> T and
JSD(beta) ~ (1 - beta) KL(S || T), the *reverse* KL (mode seeking). Taken literally the
formula is 0 at both ends, so, following the paper's usage and TRL's ``GKDTrainer``
convention, the endpoints are defined as those limits without the vanishing factor:

  beta = 0   forward KL(teacher || student)  = sum_v T log(T / S)
  beta = 1   reverse KL(student || teacher)  = sum_v S log(S / T)

(so the loss is discontinuous at the ends: beta = 1e-3 gives about 1e-3 x the beta = 0 loss).
beta = 0.5 is the symmetric JSD, bounded by log 2. log M is computed in log space as
``logaddexp(log beta + log T, log(1 - beta) + log S)``. ``temperature`` divides both logits
(TRL's convention; no tau^2 rescaling of the loss).

Metrics (means over the minibatch's real tokens): ``jsd`` (the loss itself), ``entropy`` (the
student's predictive entropy at temperature 1, as GRPO logs it), ``teacher_logprob`` (the
teacher's log-probability of the sampled tokens at temperature 1: how plausible the teacher
finds the student's samples).

The teacher must share the student's tokenizer and vocabulary size. ``teacher_logits`` is a
[B, T, V] float32 array held for the whole iteration, which bounds the batch at large vocabularies.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, Mapping

import jax
import jax.numpy as jnp

from rlalign.objectives import base


@dataclasses.dataclass(frozen=True)
class GKDConfig:
  beta: float = 0.5         # 0: forward KL(teacher || student); 1: reverse KL(student || teacher)
  temperature: float = 1.0  # divides both models' logits before the divergence
  aggregation: str = "token"  # "token" or "sequence", as base.aggregate

  def validate(self, prefix: str = "objective") -> None:
    if not 0.0 <= self.beta <= 1.0:  # also rejects nan
      raise ValueError(f"{prefix}.beta must be in [0, 1], got {self.beta}")
    if not self.temperature > 0:
      raise ValueError(f"{prefix}.temperature must be positive, got {self.temperature}")
    base.check_choice(prefix, "aggregation", self.aggregation, base.AGGREGATIONS)


def _kl(log_p: jax.Array, log_q: jax.Array) -> jax.Array:
  """KL(p || q) over the last axis from log-probabilities; terms with p = 0 count 0."""
  p = jnp.exp(log_p)
  return jnp.sum(p * jnp.where(p > 0, log_p - log_q, 0.0), axis=-1)


def generalized_jsd(student_logits: jax.Array, teacher_logits: jax.Array, beta: float,
                    temperature: float = 1.0) -> jax.Array:
  """Per-position JSD(beta)(teacher || student) over the last (vocabulary) axis; see the module
  docstring for the endpoints. ``beta`` and ``temperature`` are static Python floats."""
  log_s = jax.nn.log_softmax(student_logits.astype(jnp.float32) / temperature, axis=-1)
  log_t = jax.nn.log_softmax(teacher_logits.astype(jnp.float32) / temperature, axis=-1)
  if beta == 0.0:
    return _kl(log_t, log_s)
  if beta == 1.0:
    return _kl(log_s, log_t)
  log_m = jnp.logaddexp(log_t + math.log(beta), log_s + math.log1p(-beta))
  return beta * _kl(log_t, log_m) + (1.0 - beta) * _kl(log_s, log_m)


def gkd_prepare(hp: GKDConfig, batch: Mapping[str, jax.Array],
                score: Callable[[str, tuple], base.ModelOutputs], group_size: int = 1):
  """The frozen teacher's next-token logits on the student's samples, into the batch."""
  del hp, group_size  # every token is its own distillation target
  teacher_logits = score("teacher", ("logits",)).logits
  if teacher_logits.shape[:2] != batch["mask"].shape:
    raise ValueError(f"gkd: the teacher's logits have shape {teacher_logits.shape}, expected "
                     f"[B, T, V] with [B, T] the batch's mask {batch['mask'].shape}")
  return {**batch, "teacher_logits": teacher_logits}


def gkd_loss(hp: GKDConfig, outputs: Mapping[str, base.ModelOutputs],
             batch: Mapping[str, jax.Array]):
  student_logits = outputs["policy"].logits
  teacher_logits = batch["teacher_logits"]
  if student_logits.shape[-1] != teacher_logits.shape[-1]:
    raise ValueError(f"gkd: the student's vocabulary ({student_logits.shape[-1]}) differs from "
                     f"the teacher's ({teacher_logits.shape[-1]}); distillation needs the "
                     "same tokenizer and vocab_size")
  mask = batch["mask"]
  jsd = generalized_jsd(student_logits, teacher_logits, hp.beta, hp.temperature)
  loss = base.aggregate(jsd, mask, hp.aggregation)

  mean = lambda x: base.aggregate(x.astype(jnp.float32), mask, "token")
  sg = jax.lax.stop_gradient
  log_s = jax.nn.log_softmax(sg(student_logits), axis=-1)
  entropy = -jnp.sum(jnp.exp(log_s) * log_s, axis=-1)
  metrics = {"jsd": mean(sg(jsd)), "entropy": mean(entropy)}
  if "completion_tokens" in batch:
    log_t = jax.nn.log_softmax(teacher_logits.astype(jnp.float32), axis=-1)
    metrics["teacher_logprob"] = mean(jnp.take_along_axis(
        log_t, batch["completion_tokens"][..., None], axis=-1)[..., 0])
  return loss, metrics


OBJECTIVE = base.register(base.Objective(
    name="gkd", hparams=GKDConfig, loss_fn=gkd_loss, batch="rollouts",
    trains={"policy": ("logits", "logprobs")}, reads=("teacher",), advantage="none",
    prepare=gkd_prepare))
