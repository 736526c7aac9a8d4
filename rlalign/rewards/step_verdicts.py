"""A generative verifier that judges every step: one verdict token per step of a completion.

The verifier reads the completion in a template (``judges.Template``, as ``generative_verifier``
does) and writes a verdict for each step, ``yes`` or ``no``, then stops (RL Tango's verifier,
Zha et al. 2025, with one-token verdicts as Math-Shepherd's "+"/"-" step tags):

  740+580=231 steps? 110<eos>       the first two digits judged right, the third wrong

``generative_step_verifier``  a per-token reward: each step's P(yes) renormalised over
                              {yes, no}, read in one forward pass with every earlier step
                              judged ``yes`` (teacher-forced), at the step's last token
``step_verdicts``             the reward of the verifier's own written verdicts, from the
                              outcome label alone: 1 when it wrote one verdict per step, then
                              stopped, and judged every step ``yes`` exactly when the completion
                              is right. Its rollouts' answer is the label, the label's verdict
                              once per step (``outcome_targets``), so the reward also knows how
                              many steps there are; no step label is ever needed.

Steps end at a one-token delimiter (and at the completion's last token), or at every token
with ``delimiter=""`` (each digit of an addition). The completion is quoted without its stop
token. Both functions are checked by hand in ``tests/rewards/test_step_verdicts.py``.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Tuple

import jax
import jax.numpy as jnp

from rlalign.models import transformer as tfm
from rlalign.rewards import base, judges, process

Rollouts = Mapping[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class StepVerdictSettings:
  yes: str = "+"
  no: str = "-"
  yes_id: int = -1  # filled by ``resolve``
  no_id: int = -1

  def validate(self, prefix: str) -> None:
    if not self.yes or not self.no or self.yes == self.no:
      raise ValueError(f"{prefix}.yes and {prefix}.no must be two different non-empty words, "
                       f"got {self.yes!r} and {self.no!r}")

  def resolve(self, tokenizer: Any):
    who = "step verdicts"
    one = lambda word: process.single_token(tokenizer, word, who, "the verdict")
    return dataclasses.replace(self, yes_id=one(self.yes), no_id=one(self.no))

  def check_resolved(self, who: str) -> None:
    if self.yes_id < 0 or self.no_id < 0:
      raise ValueError(f"{who}: the verdicts have not been tokenised (resolve(tokenizer))")


@dataclasses.dataclass(frozen=True)
class StepVerifierSettings(StepVerdictSettings):
  role: str = "verifier"
  template: judges.Template = judges.Template(middle="", suffix="\nCheck each step: ")
  delimiter: str = ""                        # "" makes every token a step
  delimiter_id: int = process.UNRESOLVED     # filled by ``resolve``
  sequence_aggregate: str = "min"            # min | mean | last (metrics, dynamic sampling)

  heads_needed = ("logits",)

  def validate(self, prefix: str) -> None:
    super().validate(prefix)
    if not self.role:
      raise ValueError(f"{prefix}.role must name the verifier's role")
    if not self.template.suffix:
      raise ValueError(f"{prefix}.template.suffix must ask for the step verdicts")
    if self.sequence_aggregate not in process.AGGREGATES:
      raise ValueError(f"{prefix}.sequence_aggregate must be one of {process.AGGREGATES}, got "
                       f"{self.sequence_aggregate!r}")

  def resolve(self, tokenizer: Any) -> "StepVerifierSettings":
    who = f"generative_step_verifier of role {self.role!r}"
    resolved = StepVerdictSettings.resolve(self, tokenizer)
    return dataclasses.replace(
        resolved, template=self.template.resolve_template(tokenizer),
        delimiter_id=process.resolve_delimiter(tokenizer, self.delimiter, who))


def steps_of(rollouts: Rollouts, settings: StepVerifierSettings) -> jax.Array:
  """[B, N] where each step of the completion (without its stop token) ends."""
  tokens = rollouts["completion_tokens"]
  keep = judges.without_stop(tokens, rollouts["completion_mask"], settings.template.stop_ids)
  return process.step_ends(tokens, keep, settings.delimiter_id)


def outcome_targets(steps: jax.Array, right: jax.Array, settings: StepVerdictSettings,
                    stop_id: int) -> Tuple[jax.Array, jax.Array]:
  """The answer of a verifier task when only the outcome is known: the label's verdict once
  per step, then the stop token; tokens and mask [B, N + 1]."""
  B, N = steps.shape
  count = jnp.sum(steps, axis=1)
  col = jnp.arange(N + 1)[None, :]
  word = jnp.where(right, settings.yes_id, settings.no_id)[:, None]
  tokens = jnp.where(col < count[:, None], word, jnp.where(col == count[:, None], stop_id, 0))
  return tokens.astype(jnp.int32), col <= count[:, None]


def read_verdicts(rollouts: Rollouts, settings: StepVerdictSettings
                  ) -> Tuple[jax.Array, jax.Array, jax.Array]:
  """The verifier's written verdicts against its task's answer (``outcome_targets``): [B]
  whether it wrote exactly one verdict per step and then the answer's stop token, [B] whether
  it judged every step yes, and [B] whether the label is right."""
  tokens, mask = rollouts["completion_tokens"], rollouts["completion_mask"].astype(bool)
  answer = rollouts["answer_tokens"]
  count = jnp.sum(rollouts["answer_mask"], axis=1) - 1   # the steps: the answer less its stop
  B, N = tokens.shape
  end = jnp.clip(count, 0, N - 1)
  stop = jnp.take_along_axis(answer, jnp.maximum(count, 0)[:, None], axis=1)[:, 0]
  stopped = (count < N) & mask[jnp.arange(B), end] & (tokens[jnp.arange(B), end] == stop)
  before = jnp.arange(N)[None, :] < count[:, None]
  verdict = (tokens == settings.yes_id) | (tokens == settings.no_id)
  well_formed = jnp.all(~before | (verdict & mask), axis=1) & stopped & (count > 0)
  all_yes = jnp.all(~before | (tokens == settings.yes_id), axis=1)
  return well_formed, all_yes, answer[:, 0] == settings.yes_id


@base.in_graph("step_verdicts", settings=StepVerdictSettings)
def step_verdicts(rollouts: Rollouts, roles: Mapping[str, base.RoleModel],
                  settings: StepVerdictSettings) -> jax.Array:
  """1 where the verifier wrote one verdict per step, then stopped, and its verdicts say
  "all right" exactly when the label does; else 0."""
  del roles
  settings.check_resolved("step_verdicts")
  well_formed, all_yes, label = read_verdicts(rollouts, settings)
  return (well_formed & (all_yes == label)).astype(jnp.float32)


def judge_with_verdicts(rollouts: Rollouts, steps: jax.Array, settings: StepVerifierSettings
                        ) -> Tuple[jax.Array, jax.Array, jax.Array]:
  """The verifier's input with a ``yes`` after the template for every step, left-packed:
  tokens and mask [B, T + N], and [B, N] the column whose logits predict step k's verdict
  (valid for k < the row's step count)."""
  tokens, mask = judges.judge_input(rollouts, settings.template)
  B, N = steps.shape
  count = jnp.sum(steps, axis=1)
  verdicts = (jnp.full((B, N), settings.yes_id, jnp.int32),
              jnp.arange(N)[None, :] < count[:, None])
  tokens, mask = judges.left_pack([(tokens, mask), verdicts])
  W = tokens.shape[1]
  before = W - count[:, None] + jnp.arange(N)[None, :] - 1
  return tokens, mask, jnp.clip(before, 0, W - 1)


def verdict_logits_at(params, model: tfm.ModelConfig, tokens: jax.Array, mask: jax.Array,
                      columns: jax.Array, ids: Tuple[int, int]) -> jax.Array:
  """[B, N, 2] the logits of ``ids`` after the tokens at ``columns`` [B, N]: the two rows of
  the unembedding only, so a large vocabulary costs nothing here."""
  hidden, _ = tfm.forward(params, tokens, tfm.positions_from_mask(mask), mask, model)
  picked = jnp.take_along_axis(hidden, columns[..., None], axis=1)
  return tfm.lm_logits(params, picked, model, ids=ids)


def step_probabilities(params, model: tfm.ModelConfig, rollouts: Rollouts,
                       settings: StepVerifierSettings) -> Tuple[jax.Array, jax.Array]:
  """[B, N] each step's P(yes) / (P(yes) + P(no)) at the step's last token (0 elsewhere),
  every earlier step judged ``yes``; and [B, N] where the steps end."""
  steps = steps_of(rollouts, settings)
  tokens, mask, before = judge_with_verdicts(rollouts, steps, settings)
  logits = verdict_logits_at(params, model, tokens, mask, before,
                             (settings.yes_id, settings.no_id))
  p_yes = jax.nn.sigmoid(logits[..., 0] - logits[..., 1])           # [B, N], by step index
  index = jnp.maximum(jnp.cumsum(steps, axis=1) - 1, 0)             # the step each token ends
  return jnp.where(steps, jnp.take_along_axis(p_yes, index, axis=1), 0.0), steps


@base.in_graph("generative_step_verifier", settings=StepVerifierSettings,
               roles_of=lambda s: (s.role,), per_token=True)
def generative_step_verifier(rollouts: Rollouts, roles: Mapping[str, base.RoleModel],
                             settings: StepVerifierSettings) -> Tuple[jax.Array, jax.Array]:
  """Each step's P(yes) from the verifier role, at the step's last token, and the steps."""
  settings.template.check_resolved("generative_step_verifier")
  settings.check_resolved("generative_step_verifier")
  if settings.delimiter_id == process.UNRESOLVED:
    raise ValueError("generative_step_verifier: the delimiter has not been tokenised")
  view = roles[settings.role]
  return step_probabilities(view.params, view.model, rollouts, settings)
