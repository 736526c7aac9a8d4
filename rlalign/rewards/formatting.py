"""Format rewards on token ids, in-graph.

``think_format``  R1-style: the completion is one ``<think>...</think>`` block at its start
                  (blank tokens may come first), then a non-blank answer, and no other tag
                  anywhere; 1 or 0. The same rule as the host's ``think_format_text``
                  (``math_answer.has_think_format``) on decoded text.

The tags are text in the settings, tokenised once when the run starts (``resolve``). Where a
tag is one token (an added token, as in R1 and Qwen3 tokenizers) the two rules agree exactly;
a tag spelled in several tokens is matched as that id sequence, which a tokenizer that merges
across the tag's edge ("x<" as one token) can spell otherwise in context.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Tuple

import jax
import jax.numpy as jnp

from rlalign.rewards import base


@dataclasses.dataclass(frozen=True)
class ThinkFormatSettings:
  open: str = "<think>"
  close: str = "</think>"
  open_ids: Tuple[int, ...] = ()   # filled by ``resolve``
  close_ids: Tuple[int, ...] = ()
  blank_ids: Tuple[int, ...] = ()  # tokens that decode to whitespace only

  def validate(self, prefix: str) -> None:
    if not self.open or not self.close or self.open == self.close:
      raise ValueError(f"{prefix}: open and close must be two different non-empty tags, got "
                       f"{self.open!r} and {self.close!r}")

  def resolve(self, tokenizer: Any) -> "ThinkFormatSettings":
    ids = {}
    for name in ("open", "close"):
      text = getattr(self, name)
      ids[name] = tuple(int(i) for i in tokenizer.encode(text))
      if not ids[name] or tokenizer.decode(ids[name], strict=False) != text:
        raise ValueError(f"think_format: the tag {name}={text!r} does not survive this "
                         f"tokenizer (it encodes to {list(ids[name])})")
    # Every token whose text is whitespace: one decode per vocabulary entry, once per run.
    texts = (tokenizer.decode([i], strict=False) for i in range(tokenizer.vocab_size))
    blank = tuple(i for i, text in enumerate(texts) if text and not text.strip())
    return dataclasses.replace(self, open_ids=ids["open"], close_ids=ids["close"],
                               blank_ids=blank)


@base.in_graph("think_format", settings=ThinkFormatSettings)
def think_format(rollouts: Mapping[str, jax.Array], roles=None,
                 settings: ThinkFormatSettings = ThinkFormatSettings()) -> jax.Array:
  """1 where the completion (its stop token aside) is ``<think>...</think>`` then an answer."""
  del roles
  if not settings.open_ids:
    raise ValueError("think_format: the tags are not tokenised; call resolve(tokenizer) first")
  tokens, mask = rollouts["completion_tokens"], rollouts["completion_mask"]
  N = tokens.shape[1]
  position = jnp.arange(N)
  last = jnp.sum(mask, axis=1) - 1
  content = mask & ~(rollouts["completion_stopped"][:, None] & (position == last[:, None]))
  blank = jnp.isin(tokens, jnp.asarray(settings.blank_ids or (-1,), tokens.dtype))
  text = content & ~blank  # tokens that show something
  opens = base.sequence_starts(tokens, content, settings.open_ids)
  closes = base.sequence_starts(tokens, content, settings.close_ids)
  first = jnp.argmax(text, axis=1)
  starts_open = jnp.take_along_axis(opens, first[:, None], axis=1)[:, 0] & jnp.any(text, 1)
  close_at = jnp.argmax(closes, axis=1)
  answer = text & (position >= (close_at + len(settings.close_ids))[:, None])
  ok = (starts_open & (opens.sum(1) == 1) & (closes.sum(1) == 1)
        & (close_at >= first + len(settings.open_ids)) & jnp.any(answer, axis=1))
  return ok.astype(jnp.float32)
