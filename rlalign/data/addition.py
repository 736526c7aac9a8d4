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


def _in_split(a: int, b: int, want_test: bool, seen: set) -> bool:
  """Whether the pair belongs to the split: a train pair, or a test pair not drawn before
  (``seen`` keeps the test pairs drawn)."""
  if is_test_pair(a, b) != want_test or (want_test and (a, b) in seen):
    return False
  if want_test:
    seen.add((a, b))
  return True


HIDDEN = "?"


def hide_units_digit(prompt: str) -> str:
  """The prompt with the second operand's units digit (its first, reversed) written "?"."""
  plus = prompt.index("+")
  return prompt[:plus + 1] + HIDDEN + prompt[plus + 2:]


def generate_problems(
    split: str, num: int, max_digits: int, carry_drop: float, seed: int,
    hidden_fraction: float = 0.0,
) -> Iterator[dict[str, str]]:
  """Yields `num` problems {"prompt", "answer", "demonstration"} for `split`.

  The train split draws only train pairs (repeats allowed); the test split
  draws only test pairs and never repeats an ordered pair. Deterministic in
  (split, num, max_digits, carry_drop, seed, hidden_fraction).

  With `hidden_fraction` > 0 that share of prompts shows the second operand's
  units digit as "?" (`hide_units_digit`): the answer is still the true sum, so
  a first answer is a guess among ten, and the news that it was wrong rules one
  out (the task of the RISE recipe, where a second attempt has something to use).
  The demonstration is the teacher's for the true operands, a guess to the student.
  """
  if not 0.0 <= hidden_fraction <= 1.0:
    raise ValueError(f"hidden_fraction must be in [0, 1], got {hidden_fraction}")
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
    if not _in_split(a, b, want_test, seen):
      continue
    prompt = format_prompt(a, b, max_digits)
    # No draw at all without hidden digits, so those streams are unchanged.
    if hidden_fraction and rng.random() < hidden_fraction:
      prompt = hide_units_digit(prompt)
    yield {
        "prompt": prompt,
        "answer": correct_answer(a, b),
        "demonstration": sloppy_answer(a, b, carry_drop, rng),
    }
    produced += 1


# ---- easy-to-hard -------------------------------------------------------------------------

EASY_HARD_SPLITS = ("train", "test", "test_hard")


def generate_easy_hard(
    split: str, num: int, easy_digits: int, hard_digits: int, hard_fraction: float,
    carry_drop: float, seed: int
) -> Iterator[dict[str, str]]:
  """Problems whose labels exist only where they are easy.

  Easy problems have operands of up to `easy_digits` digits; hard ones have one or both of up
  to `hard_digits` digits and at least one longer than `easy_digits`. Every prompt is padded
  to `hard_digits`, so the two differ in their digits, not their format.

  - "train": a fraction `hard_fraction` of the problems is hard, and a hard problem is its
    prompt alone: no answer and no demonstration, so nothing that trains can read its label.
    Easy problems have their answer and the sloppy teacher's demonstration.
  - "test": easy problems with answers (held out).
  - "test_hard": hard problems with their gold answers, the only place those exist; a
    program reads them only as a held-out evaluator does.

  Train and test problems come from disjoint operand pairs (`is_test_pair`), and test splits
  never repeat an ordered pair. Deterministic in the arguments.
  """
  if split not in EASY_HARD_SPLITS:
    raise ValueError(f"split must be one of {EASY_HARD_SPLITS}, got {split!r}")
  if not 1 <= easy_digits < hard_digits:
    raise ValueError(f"need 1 <= easy_digits < hard_digits, got {easy_digits}, {hard_digits}")
  if not 0.0 <= hard_fraction <= 1.0:
    raise ValueError(f"hard_fraction must be in [0, 1], got {hard_fraction}")
  if not 0.0 <= carry_drop <= 1.0:
    raise ValueError(f"carry_drop must be in [0, 1], got {carry_drop}")
  offset = {"train": 0, "test": 1_000_003, "test_hard": 2_000_003}[split]
  rng = np.random.default_rng([seed, offset, easy_digits, hard_digits])
  want_test = split != "train"
  easy_size = 10**easy_digits
  seen = set()
  produced, attempts = 0, 0
  while produced < num:
    attempts += 1
    if attempts > 100 * num + 10_000:
      raise ValueError(f"could not draw {num} distinct {split} problems with easy_digits="
                       f"{easy_digits}, hard_digits={hard_digits}; ask for fewer "
                       "(data.num_test)")
    hard = split == "test_hard" or (split == "train" and rng.random() < hard_fraction)
    if hard:
      a, b = sample_operand(rng, hard_digits), sample_operand(rng, hard_digits)
      if max(a, b) < easy_size:
        continue
    else:
      a, b = sample_operand(rng, easy_digits), sample_operand(rng, easy_digits)
    if not _in_split(a, b, want_test, seen):
      continue
    prompt = format_prompt(a, b, hard_digits)
    if split == "train" and hard:
      yield {"prompt": prompt, "answer": "", "demonstration": ""}
    else:
      yield {"prompt": prompt, "answer": correct_answer(a, b),
             "demonstration": sloppy_answer(a, b, carry_drop, rng) if split == "train" else ""}
    produced += 1


def is_hard_prompt(prompt: str, easy_digits: int) -> bool:
  """Whether an easy-to-hard prompt is hard: an operand longer than `easy_digits`."""
  return max(parse_prompt(prompt)) >= 10**easy_digits


# ---- preference pairs --------------------------------------------------------------------


def parse_prompt(prompt: str) -> tuple[int, int]:
  """The operands of a prompt written by `format_prompt`: "740+580=" -> (47, 85)."""
  if not prompt.endswith("=") or prompt.count("+") != 1:
    raise ValueError(f"not an addition prompt: {prompt!r}")
  a, b = prompt[:-1].split("+")
  if not (a.isdigit() and b.isdigit()):
    raise ValueError(f"not an addition prompt: {prompt!r}")
  return int(a[::-1]), int(b[::-1])


def is_well_formed(answer: str) -> bool:
  """Whether `answer` is some number's digits, least-significant first: digits only and no
  high-end zero ("0" itself excepted), as every correct answer is."""
  return (bool(answer) and all(c in "0123456789" for c in answer)
          and (answer == "0" or answer[-1] != "0"))


def perturbed_answer(a: int, b: int) -> str:
  """The correct answer with one digit changed, deterministically in (a, b).

  It has the same length and stays well-formed: the highest digit of a multi-digit answer
  never becomes 0.
  """
  correct = correct_answer(a, b)
  h = zlib.crc32(f"{a}+{b}".encode())
  pos = h % len(correct)
  high = pos == len(correct) - 1 and len(correct) > 1
  choices = [d for d in "0123456789" if d != correct[pos] and not (high and d == "0")]
  digit = choices[(h >> 8) % len(choices)]
  return correct[:pos] + digit + correct[pos + 1:]


def rejected_answer(a: int, b: int, demonstration: str) -> str:
  """A wrong, well-formed answer to a + b: the sloppy teacher's own answer (`demonstration`)
  if it is one, else the answer with every carry dropped if that is one, else
  `perturbed_answer` (when there is no carry to drop, or dropping gives a malformed "00",
  as for 50 + 50)."""
  correct = correct_answer(a, b)
  # carry_drop=1 drops every carry whatever the generator draws: the digitwise sum.
  all_dropped = sloppy_answer(a, b, 1.0, np.random.default_rng(0))
  for candidate in (demonstration, all_dropped):
    if candidate != correct and is_well_formed(candidate):
      return candidate
  return perturbed_answer(a, b)


def generate_pairs(
    split: str, num: int, max_digits: int, carry_drop: float, seed: int
) -> Iterator[dict[str, str]]:
  """`generate_problems`' problems, each with a preference pair.

  Yields {"prompt", "answer", "demonstration", "chosen", "rejected"}: the first three
  exactly as `generate_problems(split, num, max_digits, carry_drop, seed)` yields them,
  "chosen" the correct answer and "rejected" `rejected_answer` (mostly the sloppy
  teacher's carry mistakes). One file then feeds a warm start on the demonstrations, a
  preference phase and exact-match evaluation.
  """
  for problem in generate_problems(split, num, max_digits, carry_drop, seed):
    a, b = parse_prompt(problem["prompt"])
    yield {**problem, "chosen": problem["answer"],
           "rejected": rejected_answer(a, b, problem["demonstration"])}


def generate_unpaired(
    split: str, num: int, max_digits: int, carry_drop: float, seed: int
) -> list[dict[str, object]]:
  """`generate_pairs`' pairs as unpaired labelled examples, for KTO and pointwise verifiers.

  Each problem gives two records {"prompt", "answer", "demonstration", "completion",
  "label"}: its chosen answer with label True and its rejected one with label False. The
  `2 * num` records are shuffled (deterministically in the arguments), so a batch mixes
  labels and seldom holds both halves of a pair.
  """
  records = []
  for pair in generate_pairs(split, num, max_digits, carry_drop, seed):
    problem = {k: v for k, v in pair.items() if k not in ("chosen", "rejected")}
    records.append({**problem, "completion": pair["chosen"], "label": True})
    records.append({**problem, "completion": pair["rejected"], "label": False})
  # A sequence seed: a stream apart from generate_problems' (seed + offset).
  rng = np.random.default_rng([seed, _SPLIT_SEED_OFFSETS[split]])
  return [records[i] for i in rng.permutation(len(records))]


def _write_splits(out_dir: str, generate, num_train: int, num_test: int,
                  max_digits: int, carry_drop: float, seed: int) -> tuple[str, str]:
  """Writes `generate(split, ...)`'s records as `out_dir`/{train,test}.jsonl."""
  import json
  import os

  os.makedirs(out_dir, exist_ok=True)
  paths = []
  for split, num in (("train", num_train), ("test", num_test)):
    path = os.path.join(out_dir, f"{split}.jsonl")
    with open(path, "w") as f:
      for record in generate(split, num, max_digits, carry_drop, seed):
        f.write(json.dumps(record) + "\n")
    paths.append(path)
  return paths[0], paths[1]


def write_pairs(
    out_dir: str,
    *,
    num_train: int = 20_000,
    num_test: int = 512,
    max_digits: int = 3,
    carry_drop: float = 0.7,
    seed: int = 0,
) -> tuple[str, str]:
  """Writes `out_dir`/train.jsonl and `out_dir`/test.jsonl of `generate_pairs`; returns
  their paths."""
  return _write_splits(out_dir, generate_pairs, num_train, num_test, max_digits,
                       carry_drop, seed)


def write_unpaired(
    out_dir: str,
    *,
    num_train: int = 20_000,
    num_test: int = 512,
    max_digits: int = 3,
    carry_drop: float = 0.7,
    seed: int = 0,
) -> tuple[str, str]:
  """Writes `out_dir`/train.jsonl and `out_dir`/test.jsonl of `generate_unpaired` (two
  records per problem); returns their paths."""
  return _write_splits(out_dir, generate_unpaired, num_train, num_test, max_digits,
                       carry_drop, seed)


def main(argv=None) -> None:
  """python -m rlalign.data.addition --pairs_out=DIR and/or --unpaired_out=DIR
  [--num_train=...]: preference pairs, and/or the same pairs as unpaired labelled records."""
  import argparse

  parser = argparse.ArgumentParser(
      prog="python -m rlalign.data.addition",
      description="Write addition preference pairs (--pairs_out) and/or the same pairs as "
                  "unpaired labelled completions (--unpaired_out), each as DIR/train.jsonl "
                  "and DIR/test.jsonl.")
  parser.add_argument("--pairs_out", help="output directory for preference pairs")
  parser.add_argument("--unpaired_out",
                      help="output directory for unpaired records (completion, label)")
  parser.add_argument("--num_train", type=int, default=20_000,
                      help="train problems (an unpaired file gets two records each)")
  parser.add_argument("--num_test", type=int, default=512)
  parser.add_argument("--max_digits", type=int, default=3)
  parser.add_argument("--carry_drop", type=float, default=0.7)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  if not (args.pairs_out or args.unpaired_out):
    parser.error("give --pairs_out=DIR and/or --unpaired_out=DIR")
  settings = dict(num_train=args.num_train, num_test=args.num_test,
                  max_digits=args.max_digits, carry_drop=args.carry_drop, seed=args.seed)
  for out, write in ((args.pairs_out, write_pairs), (args.unpaired_out, write_unpaired)):
    if out:
      train, test = write(out, **settings)
      print(f"{train}\n{test}")


if __name__ == "__main__":
  main()
