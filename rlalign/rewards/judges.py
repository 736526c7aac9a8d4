"""Generative verifiers: a language-model role asked whether a completion is right, in-graph.

``generative_verifier``  one forward pass over the verifier's template, reward P(Yes)
                         renormalised over {Yes, No}: sigmoid(logit_yes - logit_no)
``judge_score``          the verifier writes its judgement, and the reward is the score after
                         "Score:" in its text: parsed on token ids inside the program where
                         the tokenizer spells each digit as one token, else on the host from
                         the decoded judgement (``parse``; generation stays in-graph)

The template is text in the reward's settings, tokenised once when the run starts
(``resolve``), so a template the tokenizer cannot express fails before anything compiles:

  [prefix] prompt [middle] completion [suffix]  -> the verifier reads this, left-packed

The completion enters without its stop token (a verifier should not see an end of text in
the middle of its question). A verdict word that is several tokens (a character tokenizer's
"Yes") is judged by its first token; the two first tokens must differ.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Mapping, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from rlalign.models import transformer as tfm
from rlalign.rewards import base
from rlalign.sampling import sampler

Rollouts = Mapping[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class Template:
  """The verifier's prompt around the policy's prompt and completion, as text and ids."""
  prefix: str = ""
  middle: str = "\nAnswer: "
  suffix: str = "\nIs the answer correct? Yes or No: "
  # Filled by ``resolve`` from the run's tokenizer.
  prefix_ids: Tuple[int, ...] = ()
  middle_ids: Tuple[int, ...] = ()
  suffix_ids: Tuple[int, ...] = ()
  stop_ids: Tuple[int, ...] = ()

  def resolve_template(self, tokenizer: Any) -> "Template":
    encode = lambda text: tuple(int(i) for i in tokenizer.encode(text)) if text else ()
    return dataclasses.replace(self, prefix_ids=encode(self.prefix),
                               middle_ids=encode(self.middle), suffix_ids=encode(self.suffix),
                               stop_ids=(int(tokenizer.eos_id),))

  def check_resolved(self, who: str) -> None:
    if self.suffix and not self.suffix_ids:
      raise ValueError(f"{who}: the template has not been tokenised (resolve(tokenizer))")


def left_pack(parts: Sequence[Tuple[jax.Array, jax.Array]]) -> Tuple[jax.Array, jax.Array]:
  """``parts`` (tokens [B, n_i], mask [B, n_i]) side by side, left-packed: every masked-out
  position moves to the front, stably, so the real tokens keep their order, the last column
  is the last part's last real token and positions run unbroken over the real ones."""
  tokens = jnp.concatenate([t.astype(jnp.int32) for t, _ in parts], axis=1)
  mask = jnp.concatenate([m.astype(bool) for _, m in parts], axis=1)
  order = jnp.argsort(mask, axis=1, stable=True)  # pads (False) first, real tokens in order
  return (jnp.take_along_axis(tokens, order, axis=1),
          jnp.take_along_axis(mask, order, axis=1))


def constant(ids: Sequence[int], rows: int) -> Tuple[jax.Array, jax.Array]:
  """Fixed text ``ids`` on every one of ``rows`` rows, as a part for ``left_pack``."""
  return (jnp.broadcast_to(jnp.asarray(ids, jnp.int32), (rows, len(ids))),
          jnp.ones((rows, len(ids)), bool))


def without_stop(tokens: jax.Array, mask: jax.Array, stop_ids: Sequence[int]) -> jax.Array:
  """``mask`` less the stop tokens: an answer quoted inside a longer text does not end it."""
  keep = mask.astype(bool)
  if stop_ids:
    keep = keep & ~jnp.isin(tokens, jnp.asarray(stop_ids, jnp.int32))
  return keep


def judge_input(rollouts: Rollouts, template: Template) -> Tuple[jax.Array, jax.Array]:
  """The verifier's tokens and mask [B, T], left-packed: every pad (of the prompt's left
  padding, the completion's right padding and its stop token) moves to the front, so the
  last column is the template's last token and positions run unbroken over the real ones."""
  B = rollouts["prompt_tokens"].shape[0]
  completion = rollouts["completion_tokens"]
  keep = without_stop(completion, rollouts["completion_mask"], template.stop_ids)
  return left_pack([constant(template.prefix_ids, B),
                    (rollouts["prompt_tokens"], rollouts["prompt_mask"]),
                    constant(template.middle_ids, B), (completion, keep),
                    constant(template.suffix_ids, B)])


def _first_token(tokenizer: Any, word: str, who: str) -> int:
  ids = tokenizer.encode(word)
  if not ids:
    raise ValueError(f"{who}: {word!r} encodes to no token")
  return int(ids[0])


@dataclasses.dataclass(frozen=True)
class VerifierSettings:
  role: str = "verifier"
  template: Template = Template()
  yes: str = "Yes"
  no: str = "No"
  yes_id: int = -1  # filled by ``resolve``: the first token of each verdict
  no_id: int = -1

  heads_needed = ("logits",)

  def validate(self, prefix: str) -> None:
    if not self.role:
      raise ValueError(f"{prefix}.role must name the verifier's role")
    if not self.template.suffix:
      raise ValueError(f"{prefix}.template.suffix must ask the question the verdict answers")
    if not self.yes or not self.no:
      raise ValueError(f"{prefix}.yes and {prefix}.no must be non-empty")

  def resolve(self, tokenizer: Any) -> "VerifierSettings":
    who = f"generative verifier of role {self.role!r}"
    yes, no = _first_token(tokenizer, self.yes, who), _first_token(tokenizer, self.no, who)
    if yes == no:
      raise ValueError(f"{who}: {self.yes!r} and {self.no!r} start with the same token {yes}; "
                       "choose verdicts whose first tokens differ")
    return dataclasses.replace(self, template=self.template.resolve_template(tokenizer),
                               yes_id=yes, no_id=no)


def verdict_logits(params, model: tfm.ModelConfig, tokens: jax.Array, mask: jax.Array
                   ) -> jax.Array:
  """The verifier's next-token logits after the last (real) column, [B, V]."""
  hidden, _ = tfm.forward(params, tokens, tfm.positions_from_mask(mask), mask, model)
  return tfm.lm_logits(params, hidden[:, -1], model)


@base.in_graph("generative_verifier", settings=VerifierSettings, roles_of=lambda s: (s.role,))
def generative_verifier(rollouts: Rollouts, roles: Mapping[str, base.RoleModel],
                        settings: VerifierSettings) -> jax.Array:
  """P(Yes | template) / (P(Yes) + P(No)) from one forward pass of the verifier role."""
  settings.template.check_resolved("generative_verifier")
  view = roles[settings.role]
  tokens, mask = judge_input(rollouts, settings.template)
  logits = verdict_logits(view.params, view.model, tokens, mask)
  return jax.nn.sigmoid(logits[:, settings.yes_id] - logits[:, settings.no_id])


@dataclasses.dataclass(frozen=True)
class JudgeScoreSettings:
  role: str = "verifier"
  template: Template = Template(suffix="\nRate the answer from 0 to 9. ")
  marker: str = "Score:"   # the verdict is the first number after it (spaces may come first)
  max_score: int = 9       # reward = score / max_score; above 9 needs the host parse
  # Where the score is read: "graph" (on token ids, one-digit scores, one-token digits),
  # "host" (a regex on the decoded judgement, any number) or "auto": graph where the
  # tokenizer allows, else host (``resolve`` decides).
  parse: str = "auto"
  max_new_tokens: int = 16
  temperature: float = 0.0  # 0: the verifier's greedy judgement
  fallback: float = 0.0     # the reward when no score can be read
  marker_ids: Tuple[int, ...] = ()  # filled by ``resolve``
  digit_ids: Tuple[int, ...] = ()   # the ids of "0".."9", each one token
  space_ids: Tuple[int, ...] = ()

  heads_needed = ("logits",)

  def validate(self, prefix: str) -> None:
    if not self.role:
      raise ValueError(f"{prefix}.role must name the verifier's role")
    if not self.marker:
      raise ValueError(f"{prefix}.marker must be the text before the score")
    if self.parse not in PARSE_MODES:
      raise ValueError(f"{prefix}.parse must be one of {PARSE_MODES}, got {self.parse!r}")
    if self.max_score < 1:
      raise ValueError(f"{prefix}.max_score must be >= 1, got {self.max_score}")
    if self.max_score > 9 and self.parse == "graph":
      raise ValueError(f"{prefix}.max_score is {self.max_score}, more than one digit: the "
                       "in-graph parser reads one digit; use parse='host' (or 'auto')")
    if self.max_new_tokens <= 0:
      raise ValueError(f"{prefix}.max_new_tokens must be positive, got {self.max_new_tokens}")
    if self.temperature < 0:
      raise ValueError(f"{prefix}.temperature must be >= 0, got {self.temperature}")

  @property
  def finishes_on_host(self) -> bool:
    return self.parse == "host"

  def resolve(self, tokenizer: Any) -> "JudgeScoreSettings":
    who = f"judge_score of role {self.role!r}"
    template = self.template.resolve_template(tokenizer)
    digit_ids = [tuple(int(i) for i in tokenizer.encode(d)) for d in "0123456789"]
    spelled = next((d for d, ids in zip("0123456789", digit_ids) if len(ids) != 1), None)
    marker_ids = tuple(int(i) for i in tokenizer.encode(self.marker))
    if self.parse == "host" or (self.parse == "auto" and (spelled or self.max_score > 9)):
      return dataclasses.replace(self, template=template, parse="host", marker_ids=marker_ids)
    if spelled is not None:
      raise ValueError(f"{who}: the digit {spelled!r} is "
                       f"{len(digit_ids[int(spelled)])} tokens in this tokenizer; the in-graph "
                       "parser reads one-token digits (parse='host' reads the decoded text)")
    space = tuple(int(i) for i in tokenizer.encode(" ")) if self._has_space(tokenizer) else ()
    return dataclasses.replace(self, template=template, parse="graph", marker_ids=marker_ids,
                               digit_ids=tuple(ids[0] for ids in digit_ids),
                               space_ids=space[:1])

  @staticmethod
  def _has_space(tokenizer: Any) -> bool:
    try:
      return len(tokenizer.encode(" ")) == 1
    except ValueError:  # a character tokenizer without a space
      return False


def parse_score(tokens: jax.Array, mask: jax.Array, settings: JudgeScoreSettings
                ) -> Tuple[jax.Array, jax.Array]:
  """The digit after the first ``marker`` in each row of generated ids, [B] floats, and
  whether one was found, [B] bools. One space token may sit between marker and digit."""
  L = len(settings.marker_ids)
  padded = jnp.pad(jnp.where(mask, tokens, -1), ((0, 0), (0, L + 2)), constant_values=-1)
  hit = base.sequence_starts(tokens, mask, settings.marker_ids)             # [B, N]
  first = jnp.argmax(hit, axis=1)
  found_marker = jnp.any(hit, axis=1)
  after = jnp.take_along_axis(padded, (first + L)[:, None], axis=1)[:, 0]
  after2 = jnp.take_along_axis(padded, (first + L + 1)[:, None], axis=1)[:, 0]
  if settings.space_ids:
    after = jnp.where(after == settings.space_ids[0], after2, after)
  digits = jnp.asarray(settings.digit_ids, jnp.int32)
  is_digit = after[:, None] == digits[None, :]                               # [B, 10]
  found = found_marker & jnp.any(is_digit, axis=1)
  value = jnp.argmax(is_digit, axis=1).astype(jnp.float32)
  return value, found


PARSE_MODES = ("auto", "graph", "host")


def parse_score_text(texts: Sequence[str], settings: JudgeScoreSettings) -> np.ndarray:
  """The host parse: the first number after the first ``marker`` in each decoded judgement,
  / max_score and clipped to [0, 1], else ``fallback``. A regex and ``float``: nothing the
  verifier writes is evaluated."""
  pattern = re.compile(re.escape(settings.marker) + r"\s*(\d+(?:\.\d+)?)")
  out = np.full(len(texts), settings.fallback, np.float32)
  for i, text in enumerate(texts):
    found = pattern.search(text)
    if found:
      out[i] = min(max(float(found.group(1)) / settings.max_score, 0.0), 1.0)
  return out


@base.in_graph("judge_score", settings=JudgeScoreSettings, roles_of=lambda s: (s.role,),
               host_finish=parse_score_text)
def judge_score(rollouts: Rollouts, roles: Mapping[str, base.RoleModel],
                settings: JudgeScoreSettings):
  """The verifier role generates its judgement in-graph; the reward is its score / max_score,
  clipped to [0, 1], or ``fallback`` where no score follows the marker. With the host parse
  the program returns the judgement's ids for :func:`parse_score_text`."""
  settings.template.check_resolved("judge_score")
  if settings.parse == "auto":
    raise ValueError("judge_score: parse='auto' is decided by resolve(tokenizer); call it first")
  view = roles[settings.role]
  out = write_judgement(view.params, view.model, rollouts,
                        rollouts.get("rng", jax.random.PRNGKey(0)), settings)
  if settings.parse == "host":
    return out.tokens, out.mask
  value, found = parse_score(out.tokens, out.mask, settings)
  return jnp.where(found, jnp.clip(value / settings.max_score, 0.0, 1.0), settings.fallback)


def write_judgement(params, model: tfm.ModelConfig, rollouts: Rollouts, rng: jax.Array,
                    settings: JudgeScoreSettings):
  """The judge's written judgement of each row (``sampler.Samples``), in-graph."""
  tokens, mask = judge_input(rollouts, settings.template)
  config = sampler.SamplingConfig(max_new_tokens=settings.max_new_tokens,
                                  temperature=settings.temperature,
                                  stop_tokens=settings.template.stop_ids)
  return sampler.sample(params, tokens, mask, rng, model, config)


@dataclasses.dataclass(frozen=True)
class MetaJudgeSettings:
  """The meta-judge of Meta-Rewarding (Wu et al. 2024): a judge's input, then two of its
  judgements, then the question; the verdict is the first token of ``first`` or ``second``."""
  role: str = "policy"
  between: str = "\nOr: "
  question: str = "\nWhich judgement is right, A or B? "
  first: str = "A"
  second: str = "B"
  between_ids: Tuple[int, ...] = ()  # filled by ``resolve``
  question_ids: Tuple[int, ...] = ()
  first_id: int = -1
  second_id: int = -1
  stop_ids: Tuple[int, ...] = ()

  heads_needed = ("logits",)

  def validate(self, prefix: str) -> None:
    if not self.role:
      raise ValueError(f"{prefix}.role must name the meta-judge's role")
    if not self.question or not self.first or not self.second:
      raise ValueError(f"{prefix}.question, .first and .second must be non-empty")

  def resolve(self, tokenizer: Any) -> "MetaJudgeSettings":
    who = f"meta_judge of role {self.role!r}"
    first, second = (_first_token(tokenizer, self.first, who),
                     _first_token(tokenizer, self.second, who))
    if first == second:
      raise ValueError(f"{who}: {self.first!r} and {self.second!r} start with the same token "
                       f"{first}; choose verdicts whose first tokens differ")
    encode = lambda text: tuple(int(i) for i in tokenizer.encode(text)) if text else ()
    return dataclasses.replace(self, between_ids=encode(self.between),
                               question_ids=encode(self.question), first_id=first,
                               second_id=second, stop_ids=(int(tokenizer.eos_id),))


def meta_input(prompt: Tuple[jax.Array, jax.Array], a: Tuple[jax.Array, jax.Array],
               b: Tuple[jax.Array, jax.Array], settings: MetaJudgeSettings
               ) -> Tuple[jax.Array, jax.Array]:
  """The meta-judge's tokens and mask, left-packed: the judge's input ``prompt``, judgement
  ``a``, the text between, judgement ``b`` (each without its stop), the question."""
  rows = prompt[0].shape[0]
  quote = lambda part: (part[0], without_stop(part[0], part[1], settings.stop_ids))
  return left_pack([prompt, quote(a), constant(settings.between_ids, rows), quote(b),
                    constant(settings.question_ids, rows)])


def first_is_better(params, model: tfm.ModelConfig, prompt, a, b, settings: MetaJudgeSettings
                    ) -> jax.Array:
  """P(``a`` is the better judgement), asked in both orders and averaged, [rows]: a judge
  that favours a position gains nothing by it."""
  def p_first(x, y):
    logits = verdict_logits(params, model, *meta_input(prompt, x, y, settings))
    return jax.nn.sigmoid(logits[:, settings.first_id] - logits[:, settings.second_id])
  return 0.5 * (p_first(a, b) + 1.0 - p_first(b, a))


@base.in_graph("meta_judge", settings=MetaJudgeSettings, roles_of=lambda s: (s.role,))
def meta_judge(rollouts: Rollouts, roles: Mapping[str, base.RoleModel],
               settings: MetaJudgeSettings) -> jax.Array:
  """Rows in contiguous pairs, two judgements of one judge input (the prompt): each row's
  reward is the meta-judge's P(it is the better of its pair); two identical judgements state
  no preference, 0.5 each."""
  B = rollouts["completion_tokens"].shape[0]
  if B % 2:
    raise ValueError(f"meta_judge compares judgements in pairs: {B} rows is not whole pairs")
  view = roles[settings.role]
  tokens = rollouts["completion_tokens"]
  mask = without_stop(tokens, rollouts["completion_mask"], settings.stop_ids)
  prompt = (rollouts["prompt_tokens"][0::2], rollouts["prompt_mask"][0::2])
  a, b = (tokens[0::2], rollouts["completion_mask"][0::2]), (tokens[1::2],
                                                             rollouts["completion_mask"][1::2])
  p = first_is_better(view.params, view.model, prompt, a, b, settings)
  same = jnp.all(jnp.where(mask[0::2], tokens[0::2], -1) == jnp.where(mask[1::2], tokens[1::2],
                                                                      -1), axis=1)
  p = jnp.where(same, 0.5, p)
  return jnp.stack([p, 1.0 - p], axis=1).reshape(B)
