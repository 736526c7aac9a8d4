"""Tests for rlalign.rewards.math_answer: answer extraction, exact parsing and format rewards."""

import builtins
import fractions
import os
import random

import numpy as np
import pytest

from rlalign import rewards
from rlalign.rewards import base, math_answer

F = fractions.Fraction

# (completion, reference, expected reward)
CASES = [
    # \boxed{}: the last one wins, nested braces are kept whole.
    (r"So $x = \boxed{42}$.", "42", 1.0),
    (r"first \boxed{3}, then corrected: \boxed{4}", "4", 1.0),
    (r"first \boxed{3}, then corrected: \boxed{4}", "3", 0.0),
    (r"\boxed{\frac{1}{2}}", "0.5", 1.0),
    (r"\boxed{\dfrac{\frac{1}{2}}{3}}", "1/6", 1.0),
    (r"\fbox{7}", "7", 1.0),
    (r"the answer is 9 so \boxed{8}", "8", 1.0),        # a box beats the phrase
    (r"\boxed{5} and a truncated \boxed{6", "5", 1.0),  # an unclosed last box is skipped
    # "the answer is" / "answer:", to the end of the sentence or line.
    ("The answer is 12.", "12", 1.0),
    ("Thus, THE ANSWER IS 3.5. Checking: 2 + 1.5 = 3.5", "3.5", 1.0),
    ("The final answer is: $-7$\nDone in 4 steps", "-7", 1.0),
    ("**Answer:** 1,234", "1234", 1.0),
    ("answer: 6 apples", "6", 0.0),                    # bare words are not stripped
    # The last number when there is neither.
    ("3 cows and 4 pigs, so 7 animals", "7", 1.0),
    ("we get -4", "-4", 1.0),
    ("it costs 1,234,567 dollars", "1234567", 1.0),
    ("about 45% of them", "0.45", 1.0),
    ("it is 3/4 of the cake", r"\frac{3}{4}", 1.0),
    (r"so it is -\frac{1}{2} in the end", "-0.5", 1.0),
    # Equivalent spellings of one value.
    (r"\boxed{0.50}", "1/2", 1.0),
    (r"\boxed{.5}", r"\frac12", 1.0),
    (r"\boxed{-2.}", "-2", 1.0),
    (r"\boxed{50\%}", "0.5", 1.0),
    (r"\boxed{50\%}", "50", 1.0),                      # a dataset's "%" may be decoration
    (r"\boxed{0.5}", "50", 0.0),
    (r"\boxed{\tfrac{3}{4}}", "0.75", 1.0),
    (r"\boxed{\frac{-1}{2}}", r"-\frac{1}{2}", 1.0),
    ("\\boxed{\u2212\\frac12}", "-0.5", 1.0),          # unicode minus
    (r"\boxed{$\frac{6}{4}$}", r"$\dfrac{3}{2}$", 1.0),
    (r"\boxed{1{,}000}", "1000", 1.0),
    (r"\boxed{1\,000}", "1000", 1.0),
    (r"\boxed{\left( \frac{1}{3} \right)}", "1/3", 1.0),
    (r"\boxed{5 \text{ cm}}", "5", 1.0),
    (r"\boxed{90^\circ}", "90", 1.0),
    (r"\boxed{x = 3}", "3", 1.0),
    (r"\boxed{\$12}", "12", 1.0),
    # The reference may carry a box of its own.
    ("The answer is 10", r"so \boxed{10}", 1.0),
    ("The answer is 10", r"\boxed{\frac{20}{2}}", 1.0),
    # Non-numeric answers match as normalised strings.
    (r"\boxed{B}", "b", 1.0),
    (r"\boxed{\text{B}}", "B.", 1.0),
    (r"\boxed{\pi}", r"$\pi$", 1.0),
    (r"\boxed{\pi}", r"2\pi", 0.0),
    # Wrong answers, no answers, and no arithmetic.
    (r"\boxed{41}", "42", 0.0),
    ("The answer is 1/3", "0.33", 0.0),
    ("I do not know.", "42", 0.0),
    ("", "42", 0.0),
    (r"\boxed{2+3}", "5", 0.0),
    (r"\boxed{}", "0", 0.0),
    (r"\boxed{1/0}", "0", 0.0),
]


@pytest.mark.parametrize("completion,reference,expected", CASES)
def test_math_answer_table(completion, reference, expected):
  out = math_answer.math_answer([""], [completion], [reference])
  assert out.tolist() == [expected], (completion, math_answer.extract_answer(completion))


@pytest.mark.parametrize("text,expected", [
    (r"a \boxed{x^{2}+\frac{1}{2}} b", r"x^{2}+\frac{1}{2}"),
    (r"\boxed{\{1, 2\}}", r"\{1, 2\}"),                 # escaped braces are not groups
    ("The answer is $\\frac{1}{2}$. Next, 7", r"$\frac{1}{2}$"),
    ("answer: B\nsome trailing 12", "B"),
    ("x-4", "4"),                                       # subtraction, not a negative number
    ("12,34", "34"),                                    # not a thousands separator
    ("no digits here", None),
    ("", None),
])
def test_extract_answer(text, expected):
  assert math_answer.extract_answer(text) == expected


@pytest.mark.parametrize("text,expected", [
    ("7", F(7)), ("-7", F(-7)), ("+7", F(7)), ("0.5", F(1, 2)), (".5", F(1, 2)),
    ("-2.", F(-2)), ("1,234,567.25", F(123456725, 100)), ("50%", F(1, 2)), ("50\\%", F(1, 2)),
    ("3/4", F(3, 4)), ("-3/4", F(-3, 4)), (r"\frac{1}{2}", F(1, 2)), (r"\dfrac{10}{4}", F(5, 2)),
    (r"\frac12", F(1, 2)), (r"\frac1{3}", F(1, 3)), (r"-\frac{1}{2}", F(-1, 2)),
    (r"\frac{\frac{1}{2}}{2}", F(1, 4)), ("$-5$", F(-5)), (r"\(5\)", F(5)), (r"\[5\]", F(5)),
    (r"\left(\frac{3}{2}\right)", F(3, 2)), (r"\!12\,", F(12)), (r"5\text{ meters}", F(5)),
    (r"5\mbox{cm}", F(5)), (r"\text{5}", F(5)), ("45^{\\circ}", F(45)), ("45°", F(45)),
    (r"y_1 = 4", F(4)), (r"\theta = 30^\circ", F(30)), ("6.", F(6)),
])
def test_parse_value_accepts(text, expected):
  got = math_answer.parse_value(text)
  assert got == expected and isinstance(got, F)


@pytest.mark.parametrize("text", [
    "2+3", "2*3", "sqrt(2)", r"\sqrt{2}", r"\pi", "1e5", "2^3", "x", "5 dollars", "5 cm", "(1,2)",
    "1,2345", "1 234", "--5", r"\frac123", r"\frac{1}{0}", "1/0", "", "   ", "{", r"\frac{1}",
    "x = y", "1 = 1", r"\text{five}", "[1, 2]", "5!",
])
def test_parse_value_rejects(text):
  assert math_answer.parse_value(text) is None


def test_parse_value_agrees_with_fraction_on_random_strings():
  rng = random.Random(0)

  def digits(lo, hi):
    return "".join(rng.choice("0123456789") for _ in range(rng.randint(lo, hi)))

  for _ in range(400):
    sign = rng.choice(["", "-", "+"])
    kind = rng.choice(["int", "decimal", "leading_dot", "fraction", "latex", "percent", "comma"])
    if kind == "int":
      text = sign + digits(1, 12)
      expected = F(text)
    elif kind == "decimal":
      text = sign + digits(1, 6) + "." + digits(0, 6)
      expected = F(text)
    elif kind == "leading_dot":
      text = sign + "." + digits(1, 6)
      expected = F(text)
    elif kind == "fraction":
      num, den = digits(1, 5), str(rng.randint(1, 10 ** 5))
      text = f"{sign}{num}/{den}"
      expected = F(text)
    elif kind == "latex":
      num, den = rng.randint(0, 10 ** 4), rng.randint(1, 10 ** 4)
      text = f"{sign}\\frac{{{num}}}{{{den}}}"
      expected = F(num, den) * (-1 if sign == "-" else 1)
    elif kind == "percent":
      body = digits(1, 4) + rng.choice(["", "." + digits(1, 3)])
      text = sign + body + "%"
      expected = F(sign + body) / 100
    else:
      value = rng.randint(1000, 10 ** 10)
      text = sign + f"{value:,}"
      expected = F(sign + str(value))
    assert math_answer.parse_value(text) == expected, text


@pytest.mark.parametrize("a,b,expected", [
    ("0.5", "1/2", True), ("50%", r"\frac{1}{2}", True), ("1,000", "1000", True),
    ("3", "3.0", True), ("3", "4", False), ("B", r"\text{b}", True), (r"\pi", r"\pi.", True),
    ("2+3", "5", False), ("", "", False), ("x" * 2000, "x" * 2000, False),
])
def test_equivalent(a, b, expected):
  assert math_answer.equivalent(a, b) is expected


HOSTILE = [
    "__import__('os').system('x')",
    r"\boxed{__import__('os').system('touch /tmp/pwned')}",
    "The answer is exec('import os')",
    "1" * 10 ** 6,
    "(" * 10 ** 6,
    r"\boxed{" * 100_000,
    r"\boxed{" * 28_000,   # just under the scan limit: every box is unclosed
    "{" * 999 + "1" + "}" * 999,
    "{" * 400 + "1" + "}" * 400,   # within the length cap, past the depth cap
    r"\frac" * 199,
    "1," * 100_000,
    "9" * 999,
]


@pytest.mark.parametrize("text", HOSTILE)
def test_hostile_inputs_are_refused_and_never_run(text, monkeypatch):
  calls = []

  def record(*args, **kwargs):
    calls.append(args)
    raise AssertionError("evaluated model text")

  # Only while the verifier runs: pytest itself compiles source to report failures.
  with monkeypatch.context() as m:
    for module, name in ((builtins, "eval"), (builtins, "exec"), (os, "system")):
      m.setattr(module, name, record)
    parsed = math_answer.parse_value(text)
    score = math_answer.math_answer([""], [text], ["0"])
    math_answer.equivalent(text, text)
    math_answer.extract_answer(text)
  assert not calls
  if text != "9" * 999:
    assert parsed is None
  assert score.tolist() == [0.0]


@pytest.mark.parametrize("text,expected", [
    ("<think>2 + 2 = 4</think>\nThe answer is 4.", True),
    ("  \n<think>reason</think> 4", True),
    ("<think></think>4", True),
    ("<think>a</think><think>b</think>4", False),   # two blocks
    ("<think>a</think>4</think>", False),           # a stray close tag
    ("<think>a</think>4 <think>", False),           # a stray open tag
    ("<think>reasoning that never closes 4", False),
    ("<think>a</think>", False),                    # nothing after the block
    ("<think>a</think>  \n ", False),
    ("Sure! <think>a</think>4", False),             # text before <think>
    ("4", False),
    ("", False),
])
def test_has_think_format(text, expected):
  assert math_answer.has_think_format(text) is expected


def test_rewards_through_the_registry():
  prompts = ["q1", "q2", "q3"]
  completions = [r"<think>hm</think> \boxed{\frac{1}{2}}", "The answer is 3.", "no idea"]
  answers = ["0.5", r"\boxed{4}", "1"]
  reward = rewards.get("math_answer")
  assert not reward.in_graph
  out = reward.fn(prompts, completions, answers)
  assert isinstance(out, np.ndarray) and out.shape == (3,)
  assert np.issubdtype(out.dtype, np.floating)
  np.testing.assert_array_equal(out, [1.0, 0.0, 0.0])

  fmt = rewards.get("think_format_text").fn(prompts, completions, answers)
  assert fmt.shape == (3,) and np.issubdtype(fmt.dtype, np.floating)
  np.testing.assert_array_equal(fmt, [1.0, 0.0, 0.0])

  terms = [base.RewardTerm("math_answer"), base.RewardTerm("think_format_text", weight=0.1)]
  scores = base.score_host(terms, prompts, completions, answers)
  np.testing.assert_array_equal(scores["math_answer"], [1.0, 0.0, 0.0])
  np.testing.assert_array_equal(scores["think_format_text"], [1.0, 0.0, 0.0])


def test_math_answer_rejects_mismatched_batches():
  with pytest.raises(ValueError):
    math_answer.math_answer(["p"], ["1"], [])
