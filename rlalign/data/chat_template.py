"""Renders Hugging Face chat templates (Jinja) exactly as `transformers` does.

A chat template is untrusted code shipped with a checkpoint, so it runs in Jinja's
`ImmutableSandboxedEnvironment`, and the template sees only plain JSON-like data. The
environment mirrors the one `transformers` builds (checked against transformers 5.x), so a
template renders to the same string here and there:

  options   trim_blocks=True, lstrip_blocks=True; the `loopcontrols` extension
            ({% break %}, {% continue %}) and a `{% generation %}` block tag, which here
            only renders its body (transformers uses it for assistant-token masks).
  filters   `tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False)`:
            plain `json.dumps`, without Jinja's HTML escaping.
  globals   `raise_exception(msg)` (raises `jinja2.TemplateError`), `strftime_now(fmt)`
            (local time now), a `dict` that can only build dicts, and a `namespace` that
            refuses attribute names starting with "_".
  variables `messages`, `tools` (None), `documents` (None), `add_generation_prompt`, the
            special tokens and any extra keyword (e.g. `enable_thinking`).

Messages are copied as transformers copies them: keys whose value is None are dropped, and
a reasoning trace given as `reasoning_content`, `thinking` or `reasoning` is exposed under
both `reasoning_content` and `thinking`, the names templates read.
"""

from __future__ import annotations

import contextvars
import datetime
import functools
import json
import math
import time
from typing import Any, Mapping, Sequence

import jinja2
import jinja2.ext
import jinja2.nodes
import jinja2.sandbox
import jinja2.utils
import numpy as np

# Names a message's reasoning trace may come under; templates read the first two.
_REASONING_KEYS = ("reasoning_content", "thinking", "reasoning")


class _GenerationBlock(jinja2.ext.Extension):
  """`{% generation %}...{% endgeneration %}`: renders the body unchanged."""

  tags = {"generation"}

  def parse(self, parser):
    lineno = next(parser.stream).lineno
    body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
    return jinja2.nodes.CallBlock(self.call_method("_render_body"), [], [], body).set_lineno(
        lineno)

  def _render_body(self, caller):
    return caller()


def _raise_exception(message):
  raise jinja2.exceptions.TemplateError(message)


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
  # Jinja's own tojson escapes <, >, & and ' for HTML; templates expect plain JSON.
  return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                    sort_keys=sort_keys)


def _strftime_now(fmt):
  return datetime.datetime.now().strftime(fmt)


class _DictBuilder:
  """The template's `dict`: builds dicts, but exposes no type object to poke at."""

  def __call__(self, *args, **kwargs):
    return dict(*args, **kwargs)

  def fromkeys(self, *args, **kwargs):
    return dict.fromkeys(*args, **kwargs)


class _Namespace(jinja2.utils.Namespace):
  """Jinja's `namespace`, refusing private ("_...") attribute names."""

  def __init__(*args, **kwargs):  # pylint: disable=no-method-argument
    # Same signature trick as Jinja's Namespace, so `namespace(self=1)` still works.
    self, args = args[0], args[1:]
    attrs = dict(*args, **kwargs)
    for name in attrs:
      _Namespace._check(name)
    jinja2.utils.Namespace.__init__(self, attrs)

  def __setitem__(self, name, value):
    _Namespace._check(name)
    _check_size(value)  # ns.x = ns.x ~ ns.x in a loop doubles without any call or operator
    jinja2.utils.Namespace.__setitem__(self, name, value)

  @staticmethod
  def _check(name):
    if isinstance(name, str) and name.startswith("_"):
      raise jinja2.exceptions.SecurityError(
          f"chat templates may not set underscore-prefixed namespace attributes: {name!r}")


# What one rendering may take. A real template renders a conversation in milliseconds, into
# about the conversation's own length; these bounds stop a hostile or broken one (nested
# loops, exponential string growth) with an error instead of a hang or an exhausted memory.
MAX_RENDER_SECONDS = 10.0
MAX_RENDER_CHARS = 4_000_000

_budget: contextvars.ContextVar = contextvars.ContextVar("chat_template_budget", default=None)


class TemplateLimitError(ValueError):
  """A chat template ran past its time or output-size limit."""


def _check_time() -> None:
  budget = _budget.get()
  if budget is not None and time.perf_counter() > budget[0]:
    raise TemplateLimitError(f"chat template: rendering took longer than {budget[2]:g} s")


def _check_size(value: Any) -> None:
  budget = _budget.get()
  if budget is not None and isinstance(value, (str, list, tuple)) and len(value) > budget[1]:
    raise TemplateLimitError(f"chat template: built a value of {len(value):,} items, over "
                             f"the {budget[1]:,} limit")


class _LimitedEnvironment(jinja2.sandbox.ImmutableSandboxedEnvironment):
  """The sandbox, with the clock and sizes checked at every call and arithmetic operator
  (every ``range()`` of a loop is a call, so nested loops are checked too)."""

  intercepted_binops = frozenset({"*", "**", "+"})

  def call_binop(self, context, operator, left, right):
    _check_time()
    budget = _budget.get()
    if budget is not None:
      if (operator == "*" and isinstance(right, int) and isinstance(left, (str, list, tuple))
          or operator == "*" and isinstance(left, int) and isinstance(right, (str, list, tuple))):
        count, seq = (right, left) if isinstance(right, int) else (left, right)
        if count * len(seq) > budget[1]:
          raise TemplateLimitError(f"chat template: a repetition of {count * len(seq):,} "
                                   f"items, over the {budget[1]:,} limit")
      if (operator == "**" and isinstance(left, int) and isinstance(right, int)
          and abs(left) > 1 and right * math.log2(abs(left)) > 4096):
        raise TemplateLimitError("chat template: a power of more than 4096 bits")
    result = super().call_binop(context, operator, left, right)
    _check_size(result)
    return result

  def call(__self, __context, __obj, *args, **kwargs):  # pylint: disable=no-self-argument
    _check_time()
    result = super().call(__context, __obj, *args, **kwargs)
    _check_size(result)
    return result


def _environment() -> jinja2.sandbox.ImmutableSandboxedEnvironment:
  env = _LimitedEnvironment(
      trim_blocks=True, lstrip_blocks=True,
      extensions=[_GenerationBlock, jinja2.ext.loopcontrols])
  env.filters["tojson"] = _tojson
  env.globals["raise_exception"] = _raise_exception
  env.globals["strftime_now"] = _strftime_now
  env.globals["dict"] = _DictBuilder()
  env.globals["namespace"] = _Namespace
  return env


_ENV = _environment()


@functools.lru_cache(maxsize=32)
def compile_template(template: str) -> jinja2.Template:
  """Parses `template` once; a syntax error names its line."""
  return _ENV.from_string(template)


def _plain(value: Any) -> Any:
  """A copy made of JSON-like types only, so the sandbox never sees rich objects."""
  if value is None or type(value) in (str, int, float, bool):
    return value
  # Subclasses (enums, numpy scalars) carry methods the sandbox does not know; strip them.
  if isinstance(value, str):
    return str.__str__(value)
  if isinstance(value, int):
    return int.__int__(value)
  if isinstance(value, float):
    return float.__float__(value)
  if isinstance(value, Mapping):
    return {_plain(k): _plain(v) for k, v in value.items()}
  if isinstance(value, list):
    return [_plain(v) for v in value]
  if isinstance(value, tuple):
    return tuple(_plain(v) for v in value)
  if isinstance(value, np.generic):
    return _plain(value.item())  # np.bool_(False) must stay falsy
  return f"<{type(value).__name__}>"


def _message(message: Any, index: int) -> dict:
  if not isinstance(message, Mapping):
    raise TypeError(f"chat message {index} must be a dict, got {type(message).__name__}")
  out = {k: _plain(v) for k, v in message.items() if v is not None}
  reasoning = next((out[k] for k in _REASONING_KEYS if k in out), None)
  if reasoning is not None:
    out = {"thinking": reasoning, **out, "reasoning_content": reasoning}
  return out


def apply_chat_template(template: str, messages: Sequence[Mapping[str, Any]], *,
                        add_generation_prompt: bool, bos_token: str | None,
                        eos_token: str | None, tools: Any = None, documents: Any = None,
                        max_seconds: float = MAX_RENDER_SECONDS,
                        max_chars: int = MAX_RENDER_CHARS, **extra: Any) -> str:
  """Renders one conversation with `template`, as transformers' `tokenize=False` does.

  Args:
    template: the Jinja source.
    messages: dicts with at least "role" and "content".
    add_generation_prompt: append the header that opens an assistant turn.
    bos_token, eos_token: special-token strings the template may use; None leaves the
      variable undefined (renders as ""), as transformers does for an unset token.
    tools, documents: passed through (None by default, as in transformers); tools must
      already be JSON schemas (transformers would also convert Python functions).
    max_seconds, max_chars: the rendering's limits; past either it stops with
      TemplateLimitError.
    **extra: further template variables (e.g. `enable_thinking`, `pad_token`).
  """
  if not messages:
    raise ValueError("cannot apply a chat template to an empty conversation")
  variables = {k: _plain(v) for k, v in extra.items()}
  for name, token in (("bos_token", bos_token), ("eos_token", eos_token)):
    if token is not None:
      variables[name] = token
  variables.update(messages=[_message(m, i) for i, m in enumerate(messages)],
                   tools=_plain(tools), documents=_plain(documents),
                   add_generation_prompt=add_generation_prompt)
  return render_limited(compile_template(template), variables, max_seconds=max_seconds,
                        max_chars=max_chars)


def render_limited(template: jinja2.Template, variables: Mapping[str, Any], *,
                   max_seconds: float = MAX_RENDER_SECONDS,
                   max_chars: int = MAX_RENDER_CHARS) -> str:
  """``template.render(**variables)`` within the time and size limits (TemplateLimitError);
  the same string ``render`` gives, built from the same chunks."""
  token = _budget.set((time.perf_counter() + max_seconds, max_chars, max_seconds))
  try:
    chunks, size = [], 0
    for chunk in template.generate(**variables):
      size += len(chunk)
      if size > max_chars:
        raise TemplateLimitError(f"chat template: output longer than {max_chars:,} characters")
      _check_time()
      chunks.append(chunk)
    return "".join(chunks)
  except MemoryError:
    raise TemplateLimitError("chat template: ran out of memory while rendering") from None
  finally:
    _budget.reset(token)
