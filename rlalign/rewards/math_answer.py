"""Host rewards for math answers and for R1-style ``<think>`` formatting.

Model outputs are untrusted text, so nothing here evaluates them: no ``eval``, no ``exec``, no
``sympify`` (which calls ``eval``) and no computer-algebra system. A completion could otherwise
run code on the trainer, or stall it with a pathological expression. Answers are read by a small
hand-written tokenizer and recursive-descent parser into an exact :class:`fractions.Fraction`,
with caps on input length and nesting depth so that no string costs much time.

``parse_value`` accepts a single rational value, written as:

* integers and decimals: ``42``, ``-7``, ``0.5``, ``.5``, ``-2.``; thousands separators in groups
  of three (``1,234,567``, LaTeX ``1{,}234`` and ``1\\,234``);
* fractions ``3/4`` (between two plain numbers) and ``\\frac{a}{b}``, ``\\dfrac``, ``\\tfrac``,
  ``\\cfrac``, including the ``\\frac12`` shorthand and nested fractions;
* one leading sign (``-``, ``+``, or the unicode minus), also before ``\\frac``;
* a trailing percent, ``50%`` or ``50\\%`` (the value is divided by 100, but see ``equivalent``);
* wrapped in ``$...$``, ``\\(...\\)``, ``\\[...\\]``, ``(...)``, ``{...}``, ``\\left( \\right)``,
  ``\\boxed{}``, ``\\mathbf{}``; with ``\\!``, ``\\,``, ``\\;``, ``\\quad`` and ``\\displaystyle``
  ignored;
* with degrees (``^\\circ``, ``^{\\circ}``, ``°``), a currency ``\\$``, a trailing period and a
  leading assignment such as ``x =`` or ``\\theta =`` removed;
* with units stripped only when they are spelled inside ``\\text{}``, ``\\mbox{}``, ``\\mathrm{}``
  (and kin) and the group holds nothing but letters, spaces and periods: ``5 \\text{ cm}`` is 5,
  but ``5 cm`` and ``5 dollars`` are rejected, since bare words may be part of the answer.

Everything else is rejected (``None``): operators (``2+3`` is not 5), exponents, roots,
constants (``\\pi``), scientific notation, lists, intervals and any unknown command or letter.
``equivalent`` then falls back to comparing normalised strings, so symbolic answers such as
``B`` or ``\\pi`` can still match when written identically.
"""
from __future__ import annotations

import dataclasses
import fractions
import re
from typing import List, Optional, Sequence, Tuple

import numpy as np

from rlalign.rewards import base

# Caps that bound the work per string; an answer longer than this is not an answer.
MAX_ANSWER_CHARS = 1000
MAX_DEPTH = 16
# Completions longer than this are not scanned (they score 0): every scan below is linear, but
# an unbounded one would still let a runaway sample stall the host step.
MAX_TEXT_CHARS = 200_000

Fraction = fractions.Fraction

# --- extraction --------------------------------------------------------------------------------

_BOX = re.compile(r"\\(?:boxed|fbox)\s*\{")
_BRACE = re.compile(r"\\[{}]|[{}]")
_PHRASE = re.compile(r"\bthe\s+(?:final\s+)?answer\s+is\b|\banswer\**\s*:", re.IGNORECASE)
_SENTENCE_END = re.compile(r"[.!?](?=\s|$)")
# The last number: a simple \frac{a}{b}, or a signed integer/decimal with optional thousands
# separators, "/denominator" and "%". A sign right after a word or closing bracket reads as
# subtraction ("x-4"), so it is left out there.
_NUMBER = re.compile(r"""
    (?:(?<![\w)\]}])[-+\u2212])?
    (?: \\[dtc]?frac\s*\{\s*[-+\u2212]?\d+\s*\}\s*\{\s*[-+\u2212]?\d+\s*\}
      | (?:(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?|(?<!\d)\.\d+)
        (?:/\d+(?:\.\d+)?)?
        (?:\\?%)?
    )
""", re.VERBOSE)


def _closing_braces(text: str) -> dict:
  """Maps the index of each grouping ``{`` to that of its ``}``, in one pass (``\\{`` is text)."""
  closing, stack = {}, []
  for m in _BRACE.finditer(text):
    if m.group() == "{":
      stack.append(m.start())
    elif m.group() == "}" and stack:
      closing[stack.pop()] = m.start()
  return closing


def _last_boxed(text: str) -> Optional[str]:
  """The content of the last ``\\boxed{}``/``\\fbox{}`` whose braces close, or None."""
  opens = [m.end() - 1 for m in _BOX.finditer(text)]
  if not opens:
    return None
  # One pass for all braces: rescanning from every box would be quadratic in the worst case.
  closing = _closing_braces(text)
  for start in reversed(opens):
    if start in closing:
      return text[start + 1:closing[start]]
  return None


def _after_phrase(text: str) -> Optional[str]:
  """The rest of the sentence after the last "the answer is" / "answer:", or None."""
  last = None
  for last in _PHRASE.finditer(text):
    pass
  if last is None:
    return None
  rest = text[last.end():].split("\n", 1)[0]
  end = _SENTENCE_END.search(rest)
  if end:
    rest = rest[:end.start()]
  # Markdown emphasis and a colon often sit between the phrase and the answer.
  rest = rest.strip().strip("*").strip().lstrip(":").strip()
  return rest or None


def _last_number(text: str) -> Optional[str]:
  last = None
  for last in _NUMBER.finditer(text):
    pass
  return last.group() if last else None


def extract_answer(text: str) -> Optional[str]:
  """The final answer of a completion, or None when it has none.

  In priority order: the content of the last balanced ``\\boxed{...}`` or ``\\fbox{...}`` (nested
  braces allowed; a truncated last box falls back to the one before it); else the rest of the
  sentence or line after the last "the answer is" / "answer:" (case-insensitive); else the last
  number in the text. Texts over ``MAX_TEXT_CHARS`` give None.

  Args:
    text: a decoded completion.

  Returns:
    The answer as a stripped substring of ``text``, or None.
  """
  if not text or len(text) > MAX_TEXT_CHARS:
    return None
  for rule in (_last_boxed, _after_phrase, _last_number):
    found = rule(text)
    if found is not None and found.strip():
      return found.strip()
  return None


# --- parsing -----------------------------------------------------------------------------------

_DEGREES = re.compile(r"\^\s*(?:\{\s*\\circ\s*\}|\\circ)|\\degree|°")
_THIN_THOUSANDS = re.compile(r"(?<=\d)\\,(?=\d{3}(?!\d))")
_ASSIGNMENT = re.compile(
    r"\s*(?:[A-Za-z]|\\[A-Za-z]+)(?:_(?:\{[A-Za-z0-9]+\}|[A-Za-z0-9]))?\s*=(?!=)")
_UNIT_GROUP = re.compile(r"\s*\{[A-Za-z\s.]*\}")
_TOKEN = re.compile(r"""
    (?P<space>\s+)
  | (?P<num>(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d*)?|\.\d+)
  | (?P<cmd>\\(?:[A-Za-z]+|.))
  | (?P<op>[-+/%(){}\[\]])
""", re.VERBOSE | re.DOTALL)

_MINUS = str.maketrans({"\u2212": "-", "\ufe63": "-", "\uff0d": "-"})
_FRACS = frozenset({"frac", "dfrac", "tfrac", "cfrac"})
# Skipped outright: sizing, spacing and math-mode delimiters.
_NOISE = frozenset({"left", "right", "big", "Big", "bigg", "Bigg", "bigl", "bigr", "Bigl", "Bigr",
                    "displaystyle", "textstyle", "quad", "qquad", "!", ",", ";", ":", " ", "(",
                    ")", "[", "]"})
# Skipped so that their {group} reads as a plain group.
_WRAPPERS = frozenset({"boxed", "fbox", "mathbf", "textbf", "bm"})
# Text commands: a letters-only group is a unit and is dropped; anything else is unwrapped.
_TEXTS = frozenset({"text", "textrm", "textnormal", "textup", "textit", "mbox", "mathrm"})
_CLOSE = {"(": ")", "{": "}", "[": "]"}


class _Reject(Exception):
  """Raised inside the parser when the input is not a single rational value."""


def _tokens(s: str) -> List[Tuple[str, str]]:
  """(kind, text) tokens: "num", "frac", or an operator/bracket; raises _Reject otherwise."""
  out, pos = [], 0
  while pos < len(s):
    m = _TOKEN.match(s, pos)
    if m is None:
      raise _Reject(s[pos])
    pos = m.end()
    kind = m.lastgroup
    if kind == "space":
      continue
    if kind in ("num", "op"):
      out.append((kind if kind == "num" else m.group(), m.group()))
      continue
    name = m.group()[1:]
    if name in _NOISE:
      if name in ("left", "right") and s.startswith(".", pos):
        pos += 1  # \left. is an invisible delimiter
    elif name in _FRACS:
      out.append(("frac", name))
    elif name == "%":
      out.append(("%", "%"))
    elif name in _WRAPPERS:
      pass
    elif name in _TEXTS:
      unit = _UNIT_GROUP.match(s, pos)
      if unit:
        pos = unit.end()
    else:
      raise _Reject(m.group())
  return out


def _number(text: str) -> Fraction:
  whole, _, decimals = text.replace(",", "").partition(".")
  return Fraction(int(whole + decimals or "0"), 10 ** len(decimals))


class _Parser:
  """Recursive descent over the tokens of one value.

  value   := [sign] primary ["%"]
  primary := num ["/" num] | frac arg arg | "(" value ")" | "{" value "}" | "[" value "]"
  arg     := "{" value "}" | one digit           (the \\frac12 shorthand)
  """

  def __init__(self, tokens: List[Tuple[str, str]], percent: Fraction):
    self.tokens = tokens
    self.pos = 0
    self.depth = 0
    self.percent = percent  # the factor "%" applies: 1/100, or 1 to read "50%" as 50
    self.saw_percent = False

  def parse(self) -> Fraction:
    value = self.value()
    if self.pos != len(self.tokens):
      raise _Reject("trailing tokens")
    return value

  def peek(self) -> Optional[str]:
    return self.tokens[self.pos][0] if self.pos < len(self.tokens) else None

  def take(self) -> Tuple[str, str]:
    if self.pos >= len(self.tokens):
      raise _Reject("unexpected end")
    self.pos += 1
    return self.tokens[self.pos - 1]

  def value(self) -> Fraction:
    self.depth += 1
    if self.depth > MAX_DEPTH:
      raise _Reject("too deep")
    sign = 1
    if self.peek() in ("-", "+"):
      sign = -1 if self.take()[0] == "-" else 1
    result = sign * self.primary()
    if self.peek() == "%":
      self.take()
      self.saw_percent = True
      result *= self.percent
    self.depth -= 1
    return result

  def primary(self) -> Fraction:
    kind, text = self.take()
    if kind == "num":
      result = _number(text)
      if self.peek() == "/":
        self.take()
        kind, text = self.take()
        if kind != "num":
          raise _Reject("a/b needs two numbers")
        result = _divide(result, _number(text))
      return result
    if kind == "frac":
      numerator = self.arg()
      return _divide(numerator, self.arg())
    if kind in _CLOSE:
      result = self.value()
      if self.take()[0] != _CLOSE[kind]:
        raise _Reject("unbalanced")
      return result
    raise _Reject(text)

  def arg(self) -> Fraction:
    if self.peek() == "{":
      self.take()
      result = self.value()
      if self.take()[0] != "}":
        raise _Reject("unbalanced")
      return result
    if self.peek() == "num" and self.tokens[self.pos][1].isdigit():
      # \frac12: an unbraced argument is one character, so split it off the number.
      digits = self.tokens[self.pos][1]
      if len(digits) > 1:
        self.tokens[self.pos] = ("num", digits[1:])
      else:
        self.pos += 1
      return Fraction(int(digits[0]))
    raise _Reject("bad \\frac argument")


def _divide(a: Fraction, b: Fraction) -> Fraction:
  if b == 0:
    raise _Reject("division by zero")
  return a / b


def _clean(s: str) -> str:
  """String-level normalisation before tokenizing: signs, separators, delimiters, degrees."""
  s = s.translate(_MINUS).replace("{,}", ",")
  s = _THIN_THOUSANDS.sub(",", s)
  s = s.replace("\\$", "").replace("$", "")
  s = _DEGREES.sub("", s).strip()
  for opener, closer in (("\\(", "\\)"), ("\\[", "\\]")):
    if s.startswith(opener) and s.endswith(closer):
      s = s[2:-2].strip()
  if s.endswith("."):
    s = s[:-1]
  assignment = _ASSIGNMENT.match(s)
  if assignment:
    s = s[assignment.end():]
  return s


@dataclasses.dataclass(frozen=True)
class _Parsed:
  value: Fraction      # with "%" as /100
  unscaled: Fraction   # with "%" ignored
  percent: bool


def _parse(s: str) -> Optional[_Parsed]:
  if not isinstance(s, str) or len(s) > MAX_ANSWER_CHARS:
    return None
  try:
    tokens = _tokens(_clean(s))
    if not tokens:
      return None
    parser = _Parser(list(tokens), Fraction(1, 100))
    value = parser.parse()
    if not parser.saw_percent:
      return _Parsed(value, value, False)
    return _Parsed(value, _Parser(list(tokens), Fraction(1)).parse(), True)
  except (_Reject, ValueError, ZeroDivisionError):
    return None


def parse_value(s: str) -> Optional[Fraction]:
  """The exact rational value of an answer string, or None if it is not a single rational.

  See the module docstring for what is accepted. Strings over ``MAX_ANSWER_CHARS`` characters,
  or nested deeper than ``MAX_DEPTH``, give None.

  Args:
    s: an answer, e.g. ``"-\\frac{3}{4}"``, ``"1,234.5"``, ``"$50\\%$"``.

  Returns:
    A :class:`fractions.Fraction`, or None.
  """
  parsed = _parse(s)
  return parsed.value if parsed else None


# --- equivalence -------------------------------------------------------------------------------

_TEXT_WRAPPER = re.compile(r"\\(?:text|textrm|textbf|mathrm|mathbf|mbox)\s*\{")


def _unwrap(s: str) -> str:
  """Drops wrappers that span the whole string: ``\\text{...}``, ``\\(...\\)`` and ``\\[...\\]``."""
  for _ in range(MAX_DEPTH):
    s = s.strip()
    m = _TEXT_WRAPPER.match(s)
    if m and s.endswith("}") and _closing_braces(s).get(m.end() - 1) == len(s) - 1:
      s = s[m.end():-1]
    elif s[:2] in ("\\(", "\\[") and s[-2:] == {"\\(": "\\)", "\\[": "\\]"}[s[:2]]:
      s = s[2:-2]
    else:
      break
  return s


def _normalise_text(s: str) -> str:
  s = _unwrap(s.replace("$", ""))
  s = re.sub(r"\s+", "", s)
  return s.rstrip(".").casefold()


def equivalent(a: str, b: str) -> bool:
  """Whether two answer strings say the same thing.

  Two values that parse are compared exactly. When either carries a percent sign, reading it
  as a plain number also counts, so ``50\\%`` matches ``0.5``, ``1/2`` and ``50`` (datasets
  often write the percent sign that the question already asked for). Two values that parse
  but differ never match. Otherwise the strings are compared after stripping whitespace,
  ``$``, a trailing period and a ``\\text{}`` wrapper, and case-folding.

  Args:
    a: an answer, typically extracted from a completion.
    b: the reference answer.

  Returns:
    True when they match.
  """
  if len(a) > MAX_ANSWER_CHARS or len(b) > MAX_ANSWER_CHARS:
    return False
  pa, pb = _parse(a), _parse(b)
  if pa is not None and pb is not None:
    if pa.value == pb.value:
      return True
    return (pa.percent or pb.percent) and pa.unscaled == pb.unscaled
  na = _normalise_text(a)
  return bool(na) and na == _normalise_text(b)


def _reference_answer(answer: str) -> str:
  """The value of a reference: the last box's content when it has one, else the whole string."""
  boxed = _last_boxed(answer) if len(answer) <= MAX_TEXT_CHARS else None
  return (boxed if boxed is not None else answer).strip()


@base.host("math_answer")
def math_answer(prompts: Sequence[str], completions: Sequence[str],
                answers: Sequence[str]) -> np.ndarray:
  """1 if the completion's extracted answer is equivalent to the reference answer, else 0."""
  del prompts
  if len(completions) != len(answers):
    raise ValueError(f"{len(completions)} completions but {len(answers)} answers")
  scores = np.zeros(len(completions), np.float32)
  for i, (completion, answer) in enumerate(zip(completions, answers)):
    got = extract_answer(completion)
    scores[i] = got is not None and equivalent(got, _reference_answer(answer))
  return scores


# --- format ------------------------------------------------------------------------------------

_OPEN_TAG, _CLOSE_TAG = "<think>", "</think>"


def has_think_format(text: str) -> bool:
  """Whether ``text`` is one ``<think>...</think>`` block at the start, then a non-empty answer.

  Leading whitespace is allowed; any other ``<think>`` or ``</think>`` anywhere fails, so a
  policy cannot pad the answer with extra reasoning blocks.
  """
  body = text.lstrip()
  if not body.startswith(_OPEN_TAG):
    return False
  if body.count(_OPEN_TAG) != 1 or body.count(_CLOSE_TAG) != 1:
    return False
  return bool(body[body.index(_CLOSE_TAG) + len(_CLOSE_TAG):].strip())


@base.host("think_format_text")
def think_format_text(prompts: Sequence[str], completions: Sequence[str],
                      answers: Sequence[str]) -> np.ndarray:
  """R1-style format reward on decoded text: 1 if ``has_think_format(completion)``, else 0.
  ``think_format`` (``rewards/formatting.py``) is the same rule on token ids, in-graph."""
  del prompts, answers
  return np.array([float(has_think_format(c)) for c in completions], np.float32)
