"""Text said after a model's answer, as token ids: a feedback, a question about the answer.

A raw prompt gets the text as written. A chat prompt gets it as the user's next turn through
the tokenizer's chat template, followed by the assistant's opening, without what the answer's
own stop token already closed (the end of the assistant's turn). Recipes that continue a
history in-graph (RISE's feedback, SPARK's verifier questions) tokenise their text once here.
"""
from __future__ import annotations

from typing import Any, Sequence, Tuple


def said_after_answer(tokenizer: Any, data_cfg: Any, text: str, stop_tokens: Sequence[int],
                      who: str = "text") -> Tuple[int, ...]:
  """The ids of ``text`` said after an answer that ended with one of ``stop_tokens``."""
  try:
    if data_cfg.prompt_format != "chat":
      return tuple(int(i) for i in tokenizer.encode(text))
    question, answer = [{"role": "user", "content": "Q"}], {"role": "assistant", "content": "A"}
    opened = tokenizer.apply_chat_template(question, True) + "A"
    closed = tokenizer.apply_chat_template(
        question + [answer, {"role": "user", "content": text}], True)
  except ValueError as e:
    raise ValueError(f"{who} {text!r}: {e}") from None
  if not closed.startswith(opened):
    raise ValueError(f"{who}: the chat template does not render a second user turn after the "
                     "first answer as written; give raw prompts (data.prompt_format='raw') "
                     "with this tokenizer")
  ids = [int(i) for i in tokenizer.encode(closed[len(opened):])]
  if ids and ids[0] in tuple(stop_tokens):  # the answer's stop token closed the turn already
    ids = ids[1:]
  return tuple(ids)
