"""The default RL task: reversed-digit addition with a sloppy teacher.

Numbers are written least-significant digit first, in prompts and answers:
47+85=132 is the prompt "740+580=" (operands zero-padded to `max_digits`, here 3)
with answer "231". Reversed digits let a left-to-right model emit the answer in the
order the carries are computed; padded operands keep every column at a fixed offset,
so what is hard is the carry, not finding the digits.

Each problem also carries a *demonstration* from a sloppy teacher that drops
every carry with probability `carry_drop`: imitation learning from it alone
plateaus, while RL against the exact answer can go beyond it.

Train and test problems come from disjoint sets of unordered operand pairs
(`is_test_pair`), so test accuracy measures generalisation, not recall.
"""

from __future__ import annotations

import functools
import zlib
from typing import Iterator

import numpy as np

# Seed offsets keep the train and test random streams apart for one seed.
_SPLIT_SEED_OFFSETS = {"train": 0, "test": 1_000_003}


def reverse_digits(n: int) -> str:
  """Decimal digits of `n >= 0`, least-significant first."""
  if n < 0:
    raise ValueError(f"expected a non-negative integer, got {n}")
  return str(n)[::-1]


def sample_operand(rng: np.random.Generator, max_digits: int) -> int:
  """A value uniform in [0, 10**max_digits).

  Uniform values (rather than uniform digit counts) make most problems carry at least
  once, which is exactly what the sloppy teacher gets wrong; shorter operands still occur,
  so prompt lengths vary.
  """
  return int(rng.integers(0, 10**max_digits))


def is_test_pair(a: int, b: int) -> bool:
  """Deterministic ~10% split of unordered operand pairs into the test set."""
  key = f"{min(a, b)},{max(a, b)}".encode()
  return zlib.crc32(key) % 10 == 0


@functools.lru_cache(maxsize=None)
def count_test_pairs(max_digits: int) -> int:
  """Number of ordered pairs (a, b) with up to `max_digits` digits in the test set."""
  size = 10**max_digits
  count = 0
  for a in range(size):
    for b in range(a, size):
      if is_test_pair(a, b):
        count += 1 if a == b else 2
  return count


def correct_answer(a: int, b: int) -> str:
  return reverse_digits(a + b)


def sloppy_answer(
    a: int, b: int, carry_drop: float, rng: np.random.Generator
) -> str:
  """Schoolbook addition where each carry is dropped with prob. `carry_drop`.

  Columns are added from the least-significant one; a carry into the next
  column (including a final carry that would add a new leading digit) is
  independently lost. Digits are returned least-significant first.
  """
  a_digits, b_digits = reverse_digits(a), reverse_digits(b)
  digits = []
  carry = 0
  for i in range(max(len(a_digits), len(b_digits))):
    column = carry
    column += int(a_digits[i]) if i < len(a_digits) else 0
    column += int(b_digits[i]) if i < len(b_digits) else 0
    digits.append(str(column % 10))
    carry = column // 10
    if carry and rng.random() < carry_drop:
      carry = 0
  if carry:
    digits.append(str(carry))
  return "".join(digits)


def format_prompt(a: int, b: int, width: int) -> str:
  """Both operands reversed and zero-padded on their high end to `width` digits."""
  return f"{reverse_digits(a).ljust(width, '0')}+{reverse_digits(b).ljust(width, '0')}="


def generate_problems(
    split: str, num: int, max_digits: int, carry_drop: float, seed: int
) -> Iterator[dict[str, str]]:
  """Yields `num` problems {"prompt", "answer", "demonstration"} for `split`.

  The train split draws only train pairs (repeats allowed); the test split
  draws only test pairs and never repeats an ordered pair. Deterministic in
  (split, num, max_digits, carry_drop, seed).
  """
  if split not in _SPLIT_SEED_OFFSETS:
    raise ValueError(
        f"split must be one of {tuple(_SPLIT_SEED_OFFSETS)}, got {split!r}"
    )
  if max_digits < 1:
    raise ValueError(f"max_digits must be >= 1, got {max_digits}")
  if not 0.0 <= carry_drop <= 1.0:
    raise ValueError(f"carry_drop must be in [0, 1], got {carry_drop}")
  want_test = split == "test"
  if want_test:
    # Test pairs are ~10% of all pairs; count exactly only when `num` could
    # come near that, since counting enumerates every pair.
    num_pairs = (10**max_digits) ** 2
    if num * 20 > num_pairs:
      available = count_test_pairs(max_digits)
      if num > available:
        raise ValueError(
            f"requested {num} test problems but only {available} distinct"
            f" test pairs exist with max_digits={max_digits}"
        )
  rng = np.random.default_rng(seed + _SPLIT_SEED_OFFSETS[split])
  seen = set()
  produced = 0
  while produced < num:
    a = sample_operand(rng, max_digits)
    b = sample_operand(rng, max_digits)
    if is_test_pair(a, b) != want_test:
      continue
    if want_test:
      if (a, b) in seen:
        continue
      seen.add((a, b))
    yield {
        "prompt": format_prompt(a, b, max_digits),
        "answer": correct_answer(a, b),
        "demonstration": sloppy_answer(a, b, carry_drop, rng),
    }
    produced += 1
