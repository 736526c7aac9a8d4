"""The self-rewarding task: digit strings graded by an additive five-point rubric.

A prompt states four constraints on a string of digits: "L5F3E8H7:" asks for length 5,
first digit 3, last (end) digit 8, and a 7 somewhere. The gold judge (`points`) awards one
point for each of

  digits   the response is non-empty and every character is a digit
  length   it has exactly L characters
  first    it starts with F
  last     it ends with E
  has      it contains H

so a response scores 0..5, as in the additive rubric of Self-Rewarding LMs (Yuan et al. 2024).
Checking a response is five local comparisons; writing one that earns all five means meeting
four constraints at once, each against a habit of the teacher below. Verification is easier
than generation.

The answer field holds the gold judge's key, the constraints' four digits ("5387"), never a
response; the demonstration is a sloppy teacher's response, which meets each of the four
constraints with probability `honor` and otherwise errs the same way every time (length
L + 1, first digit F + 1, last digit E + 1, no H anywhere): imitation learns the errors as
the most likely choice, so the warm start's greedy answers fail while its samples sometimes
score 5. L is 4..6.

Train and test prompts come from disjoint sets of constraints (`is_test_spec`), so held-out
scores measure generalisation, not recall.
"""
from __future__ import annotations

import zlib
from typing import Iterator, Sequence

import numpy as np

LENGTHS = (4, 5, 6)
CRITERIA = ("digits", "length", "first", "last", "has")
MAX_POINTS = len(CRITERIA)
PROMPT_LEN = 9      # "L5F3E8H7:"
MAX_RESPONSE = max(LENGTHS) + 1  # the teacher's too-long answers
_SPLIT_SEED_OFFSETS = {"train": 0, "test": 1_000_003}


def format_prompt(length: int, first: int, last: int, has: int) -> str:
  return f"L{length}F{first}E{last}H{has}:"


def spec_of(prompt: str) -> tuple[int, int, int, int]:
  """(L, F, E, H) of a prompt, read from its last nine characters (a chat template may come
  before them)."""
  tail = prompt.rstrip()[-PROMPT_LEN:]
  if (len(tail) != PROMPT_LEN or tail[0::2] != "LFEH:" or not tail[1:8:2].isdigit()):
    raise ValueError(f"not a rubric prompt (L<d>F<d>E<d>H<d>:): {prompt!r}")
  return tuple(int(c) for c in tail[1:8:2])  # type: ignore[return-value]


def is_test_spec(length: int, first: int, last: int, has: int) -> bool:
  """About one constraint set in ten is held out, by a stable hash."""
  return zlib.crc32(format_prompt(length, first, last, has).encode()) % 10 == 0


def points(spec: Sequence[int], response: str) -> np.ndarray:
  """The gold judge: [5] bools, one per criterion of `CRITERIA`. Every character counts,
  whitespace too, as it does in-graph (`rewards/rubric.py`)."""
  length, first, last, has = spec
  text = response
  return np.array([bool(text) and text.isdigit(), len(text) == length,
                   text[:1] == str(first), text[-1:] == str(last), str(has) in text])


def sloppy_response(spec: Sequence[int], honor: float, rng: np.random.Generator) -> str:
  """The teacher: each of length, first, last and has met with probability `honor`, else
  its fixed error (see the module docstring)."""
  length, first, last, has = spec
  keep = rng.random(4) < honor
  n = length if keep[0] else length + 1
  head = first if keep[1] else (first + 1) % 10
  tail = last if keep[2] else (last + 1) % 10
  others = [d for d in range(10) if d != has]
  middle = [int(rng.choice(others)) for _ in range(n - 2)]
  if keep[3]:
    middle[int(rng.integers(len(middle)))] = has
  digits = [head, *middle, tail]
  if not keep[3]:  # no H anywhere: the ends give way where they would show one
    digits = [d if d != has else (d + 2) % 10 for d in digits]
  return "".join(str(d) for d in digits)


def generate(split: str, num: int, honor: float, seed: int) -> Iterator[dict[str, str]]:
  """Yields `num` problems {"prompt", "answer", "demonstration"} of `split`; the test split
  never repeats a prompt. Deterministic in (split, num, honor, seed)."""
  if split not in _SPLIT_SEED_OFFSETS:
    raise ValueError(f"split must be one of {tuple(_SPLIT_SEED_OFFSETS)}, got {split!r}")
  if not 0.0 <= honor <= 1.0:
    raise ValueError(f"honor must be in [0, 1], got {honor}")
  want_test = split == "test"
  specs = [(n, f, e, h) for n in LENGTHS for f in range(10) for e in range(10)
           for h in range(10) if is_test_spec(n, f, e, h) == want_test]
  if want_test and num > len(specs):
    raise ValueError(f"requested {num} test problems but only {len(specs)} held-out "
                     "constraint sets exist")
  rng = np.random.default_rng(seed + _SPLIT_SEED_OFFSETS[split])
  order = rng.permutation(len(specs)) if want_test else rng.integers(len(specs), size=num)
  for i in order[:num]:
    spec = specs[int(i)]
    yield {"prompt": format_prompt(*spec), "answer": "".join(str(d) for d in spec),
           "demonstration": sloppy_response(spec, honor, rng)}
