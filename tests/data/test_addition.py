"""Tests for rlalign.data.addition."""

import collections

import numpy as np
import pytest

from rlalign.data import addition


def _parse(prompt: str) -> tuple[int, int]:
  """Inverse of the prompt format, written independently: "74+58=" -> (47, 85)."""
  assert prompt.endswith("=")
  a, b = prompt[:-1].split("+")
  return int(a[::-1]), int(b[::-1])


def test_reverse_digits():
  assert addition.reverse_digits(132) == "231"
  assert addition.reverse_digits(0) == "0"
  assert addition.reverse_digits(100) == "001"
  with pytest.raises(ValueError):
    addition.reverse_digits(-1)


def test_correct_answer_and_prompt_format():
  assert addition.correct_answer(47, 85) == "231"
  assert addition.correct_answer(0, 0) == "0"
  assert addition.format_prompt(47, 85, 3) == "740+580="
  assert addition.format_prompt(7, 123, 3) == "700+321="


def test_sample_operand_values_are_uniform():
  rng = np.random.default_rng(0)
  values = np.array([addition.sample_operand(rng, 3) for _ in range(20000)])
  assert values.min() >= 0 and values.max() <= 999
  assert abs(values.mean() - 499.5) < 8  # std of the mean is about 2
  lengths = collections.Counter(len(str(v)) for v in values)
  assert 1700 < lengths[2] < 1900  # 90 of 1000 values have two digits: 1800 expected


def test_sample_operand_single_digit():
  rng = np.random.default_rng(1)
  assert {addition.sample_operand(rng, 1) for _ in range(300)} == set(range(10))


def test_is_test_pair_is_symmetric_and_matches_known_pairs():
  one_digit = {(a, b) for a in range(10) for b in range(10) if addition.is_test_pair(a, b)}
  # zlib.crc32 of "min,max" % 10 == 0 for exactly these single-digit pairs.
  assert one_digit == {(0, 1), (1, 0), (3, 7), (7, 3), (6, 9), (9, 6), (8, 9), (9, 8)}
  assert addition.count_test_pairs(1) == 8
  assert addition.count_test_pairs(2) == 1014


def test_sloppy_answer_without_drops_is_exact():
  rng = np.random.default_rng(0)
  for a in range(100):
    for b in range(100):
      assert addition.sloppy_answer(a, b, 0.0, rng) == addition.correct_answer(a, b)
  assert addition.sloppy_answer(5, 5, 0.0, rng) == "01"


@pytest.mark.parametrize(
    "a, b, expected",
    [
        (5, 5, "0"),  # 5+5=10, carry lost.
        (47, 85, "22"),  # 7+5=12 -> 2; 4+8=12 -> 2.
        (999, 1, "099"),  # Only the first column carries.
        (123, 456, "975"),  # No carries: same as the exact answer.
        (0, 0, "0"),
        (58, 7, "55"),  # 8+7=15 -> 5; 5 -> 5.
    ],
)
def test_sloppy_answer_always_dropping_is_digitwise_sum(a, b, expected):
  assert addition.sloppy_answer(a, b, 1.0, np.random.default_rng(0)) == expected


def test_sloppy_answer_drops_each_carry_independently():
  rng = np.random.default_rng(0)
  outputs = collections.Counter(
      addition.sloppy_answer(47, 85, 0.5, rng) for _ in range(2000)
  )
  # Carry 1 kept/dropped -> digit 3/2; carry 2 kept/dropped -> "1"/nothing.
  assert set(outputs) == {"231", "23", "221", "22"}
  for count in outputs.values():
    assert 400 < count < 600  # Expected 500 each.
  dropped = sum(addition.sloppy_answer(5, 5, 0.7, rng) == "0" for _ in range(2000))
  assert 1300 < dropped < 1500  # Expected 1400.


def test_generate_problems_fields_and_split_membership():
  for split, want_test in (("train", False), ("test", True)):
    problems = list(addition.generate_problems(split, 200, 3, 0.0, seed=0))
    assert len(problems) == 200
    for p in problems:
      a, b = _parse(p["prompt"])
      assert 0 <= a <= 999 and 0 <= b <= 999
      assert addition.is_test_pair(a, b) == want_test
      assert p["answer"] == str(a + b)[::-1]
      assert p["demonstration"] == p["answer"]  # carry_drop=0.


def test_generate_problems_is_deterministic_per_seed_and_split():
  def prompts(split, seed):
    return [p["prompt"] for p in addition.generate_problems(split, 50, 3, 0.7, seed)]

  assert prompts("train", 0) == prompts("train", 0)
  assert prompts("train", 0) != prompts("train", 1)
  assert prompts("test", 0) != prompts("train", 0)


def test_demonstrations_are_sloppy():
  problems = list(addition.generate_problems("train", 300, 3, 1.0, seed=0))
  wrong = [p for p in problems if p["demonstration"] != p["answer"]]
  assert wrong  # Some problems carry, and every carry is dropped.
  for p in problems:
    a, b = _parse(p["prompt"])
    width = max(len(str(a)), len(str(b)))
    digitwise = "".join(
        str((a // 10**i + b // 10**i) % 10) for i in range(width)
    )
    assert p["demonstration"] == digitwise


def test_test_split_has_no_duplicate_pairs_and_can_be_exhausted():
  problems = list(addition.generate_problems("test", 8, 1, 0.0, seed=0))
  pairs = {_parse(p["prompt"]) for p in problems}
  assert pairs == {(0, 1), (1, 0), (3, 7), (7, 3), (6, 9), (9, 6), (8, 9), (9, 8)}


def test_too_many_test_problems_names_the_numbers():
  with pytest.raises(ValueError) as e:
    list(addition.generate_problems("test", 9, 1, 0.0, seed=0))
  assert "9" in str(e.value) and "only 8" in str(e.value)


def test_generate_problems_rejects_bad_arguments():
  with pytest.raises(ValueError, match="split"):
    list(addition.generate_problems("validation", 1, 1, 0.0, seed=0))
  with pytest.raises(ValueError, match="carry_drop"):
    list(addition.generate_problems("train", 1, 1, 1.5, seed=0))
  with pytest.raises(ValueError, match="max_digits"):
    list(addition.generate_problems("train", 1, 0, 0.5, seed=0))


# ---- preference pairs


def _well_formed(answer: str) -> bool:
  """Some number's digits, least-significant first, written independently of the module."""
  return answer.isascii() and answer.isdigit() and (answer == "0" or not answer.endswith("0"))


def test_parse_prompt_inverts_format_prompt():
  for a, b in ((47, 85), (0, 0), (999, 1), (5, 120)):
    assert addition.parse_prompt(addition.format_prompt(a, b, 3)) == (a, b)
  with pytest.raises(ValueError, match="not an addition prompt"):
    addition.parse_prompt("12-3=")


@pytest.mark.parametrize("split", ["train", "test"])
def test_generate_pairs_chosen_correct_rejected_wrong_both_well_formed(split):
  pairs = list(addition.generate_pairs(split, 400, 3, 0.7, seed=0))
  problems = list(addition.generate_problems(split, 400, 3, 0.7, seed=0))
  assert len(pairs) == 400
  sources = collections.Counter()
  for pair, problem in zip(pairs, problems):
    # The problem fields are exactly generate_problems' (same draws, same order).
    assert {k: pair[k] for k in problem} == problem
    assert set(pair) == {"prompt", "answer", "demonstration", "chosen", "rejected"}
    a, b = _parse(pair["prompt"])
    assert pair["chosen"] == pair["answer"] == str(a + b)[::-1]
    assert _well_formed(pair["chosen"]) and _well_formed(pair["rejected"])
    assert int(pair["rejected"][::-1]) != a + b
    assert len(pair["rejected"]) <= 4  # fits data.max_answer_len=5 with EOS
    if pair["demonstration"] != pair["answer"] and _well_formed(pair["demonstration"]):
      assert pair["rejected"] == pair["demonstration"]  # the teacher's own mistake
      sources["teacher"] += 1
    else:
      sources["other"] += 1
  # carry_drop=0.7 on uniform 3-digit operands: most pairs contrast a carry mistake.
  assert sources["teacher"] > 200 and sources["other"] > 40


def test_generate_pairs_without_a_teacher_mistake():
  # carry_drop=0: every demonstration is correct, so each rejected answer is the one with
  # every carry dropped (the digitwise sum) where that is wrong and well-formed, else one
  # changed digit of the correct answer.
  for pair in addition.generate_pairs("train", 300, 3, 0.0, seed=1):
    a, b = _parse(pair["prompt"])
    chosen, rejected = pair["chosen"], pair["rejected"]
    width = max(len(str(a)), len(str(b)))
    digitwise = "".join(str((a // 10**i + b // 10**i) % 10) for i in range(width))
    if digitwise != chosen and _well_formed(digitwise):
      assert rejected == digitwise
    else:
      assert len(rejected) == len(chosen)
      assert sum(x != y for x, y in zip(rejected, chosen)) == 1
    assert _well_formed(rejected) and rejected != chosen


def test_generate_pairs_is_deterministic():
  first = list(addition.generate_pairs("train", 50, 2, 0.5, seed=3))
  assert first == list(addition.generate_pairs("train", 50, 2, 0.5, seed=3))
  assert first != list(addition.generate_pairs("train", 50, 2, 0.5, seed=4))


def test_perturbed_answer_single_digits_and_high_digit():
  for a in range(10):
    for b in range(10):
      wrong = addition.perturbed_answer(a, b)
      assert wrong != str(a + b)[::-1] and _well_formed(wrong)
  # 10 + 0: "01"; a changed high digit may not become 0 ("00" is no number's digits).
  for a, b in ((10, 0), (500, 400), (999, 999)):
    wrong = addition.perturbed_answer(a, b)
    assert _well_formed(wrong) and len(wrong) == len(str(a + b))


def test_write_pairs_cli_writes_jsonl_the_builder_reads(tmp_path):
  import json

  from rlalign.data import builders
  out = str(tmp_path / "pairs")
  addition.main([f"--pairs_out={out}", "--num_train=30", "--num_test=8", "--max_digits=2",
                 "--seed=5"])
  train = builders.read_jsonl(str(tmp_path / "pairs" / "train.jsonl"))
  test = builders.read_jsonl(str(tmp_path / "pairs" / "test.jsonl"))
  assert len(train) == 30 and len(test) == 8
  expected = list(addition.generate_pairs("test", 8, 2, 0.7, seed=5))
  assert [{k: r[k] for k in expected[0]} for r in test] == expected
  assert not any(r["completion"] or r["label"] for r in train + test)
  for record in train:
    assert not addition.is_test_pair(*_parse(record["prompt"]))
  with open(tmp_path / "pairs" / "train.jsonl") as f:
    assert json.loads(f.readline()).keys() == expected[0].keys()


# ---- unpaired labelled examples


def test_generate_unpaired_splits_each_pair_into_two_labelled_records():
  pairs = list(addition.generate_pairs("train", 200, 3, 0.7, seed=2))
  records = addition.generate_unpaired("train", 200, 3, 0.7, seed=2)
  assert len(records) == 400
  problem_keys = {"prompt", "answer", "demonstration"}
  for record in records:
    assert set(record) == problem_keys | {"completion", "label"}
    assert type(record["label"]) is bool
  # Exactly the pairs' records: chosen labelled True, rejected False.
  as_records = lambda rs: sorted(tuple(sorted(r.items())) for r in rs)
  expected = [{**{k: p[k] for k in problem_keys}, "completion": p["chosen"], "label": True}
              for p in pairs]
  expected += [{**{k: p[k] for k in problem_keys}, "completion": p["rejected"], "label": False}
               for p in pairs]
  assert as_records(records) == as_records(expected)
  for record in records:
    a, b = _parse(record["prompt"])
    assert (record["completion"] == str(a + b)[::-1]) == record["label"]
  # Shuffled: not in generation order, and labels mixed in every small batch.
  assert [r["prompt"] for r in records[::2]] != [p["prompt"] for p in pairs]
  labels = [r["label"] for r in records]
  assert labels != [True, False] * 200
  batches = [labels[i:i + 16] for i in range(0, 400, 16)]
  assert all(any(b) and not all(b) for b in batches)
  assert 0.3 < sum(labels[:100]) / 100 < 0.7


def test_generate_unpaired_is_deterministic():
  first = addition.generate_unpaired("test", 20, 2, 0.5, seed=3)
  assert first == addition.generate_unpaired("test", 20, 2, 0.5, seed=3)
  assert first != addition.generate_unpaired("test", 20, 2, 0.5, seed=4)
  assert first != addition.generate_unpaired("train", 20, 2, 0.5, seed=3)


def test_unpaired_cli_writes_jsonl_the_builder_reads(tmp_path, capsys):
  from rlalign.data import builders
  pairs, unpaired = str(tmp_path / "pairs"), str(tmp_path / "unpaired")
  addition.main([f"--pairs_out={pairs}", f"--unpaired_out={unpaired}", "--num_train=30",
                 "--num_test=8", "--max_digits=2", "--seed=5"])
  assert capsys.readouterr().out.split() == [
      f"{pairs}/train.jsonl", f"{pairs}/test.jsonl",
      f"{unpaired}/train.jsonl", f"{unpaired}/test.jsonl"]
  for split, num in (("train", 30), ("test", 8)):
    records = builders.read_jsonl(f"{unpaired}/{split}.jsonl")
    expected = addition.generate_unpaired(split, num, 2, 0.7, seed=5)
    assert [{k: r[k] for k in expected[0]} for r in records] == expected
    assert [r["line"] for r in records] == list(range(1, 2 * num + 1))
    assert not any(r["chosen"] or r["rejected"] for r in records)
  # Only --unpaired_out: no pairs written.
  addition.main([f"--unpaired_out={tmp_path / 'only'}", "--num_train=4", "--num_test=2",
                 "--max_digits=2"])
  assert sorted(p.name for p in (tmp_path / "only").iterdir()) == ["test.jsonl", "train.jsonl"]


def test_cli_needs_an_output(capsys):
  with pytest.raises(SystemExit):
    addition.main(["--num_train=3"])
  assert "--pairs_out" in capsys.readouterr().err
