"""The easy-to-hard addition task: hard problems' labels exist only in the held-out split.

Checked against the prompt's own operands (parsed independently here), through the
generator, the TFDS builder and the training iterator the runtime uses."""
import dataclasses

import numpy as np
import pytest

from rlalign.data import addition, pipeline, tokenizer as tok_lib


def operands(prompt):
  a, b = prompt[:-1].split("+")
  return int(a[::-1]), int(b[::-1])


def generate(split, num, **kw):
  settings = dict(easy_digits=2, hard_digits=3, hard_fraction=0.5, carry_drop=0.7, seed=0)
  return list(addition.generate_easy_hard(split, num, **{**settings, **kw}))


def test_train_hard_problems_carry_no_label_and_easy_ones_do():
  rows = generate("train", 2000)
  hard = [r for r in rows if max(operands(r["prompt"])) >= 100]
  easy = [r for r in rows if max(operands(r["prompt"])) < 100]
  assert 0.45 < len(hard) / len(rows) < 0.55
  assert all(r["answer"] == "" and r["demonstration"] == "" for r in hard)
  for r in easy:
    a, b = operands(r["prompt"])
    assert r["answer"] == str(a + b)[::-1] and r["demonstration"]
  assert all(len(r["prompt"]) == 2 * 3 + 2 for r in rows)  # one format: padded to 3 digits
  assert [addition.is_hard_prompt(r["prompt"], 2) for r in rows] == [r in hard for r in rows]


def test_held_out_splits_hold_gold_answers_on_disjoint_pairs():
  test, hard = generate("test", 200), generate("test_hard", 300)
  assert all(max(operands(r["prompt"])) < 100 for r in test)
  assert all(100 <= max(operands(r["prompt"])) < 1000 for r in hard)
  for r in test + hard:
    a, b = operands(r["prompt"])
    assert r["answer"] == str(a + b)[::-1] and addition.is_test_pair(a, b)
  assert len({r["prompt"] for r in hard}) == 300
  train = {operands(r["prompt"]) for r in generate("train", 3000)}
  assert not train & {operands(r["prompt"]) for r in test + hard}
  assert generate("test_hard", 50) == generate("test_hard", 50)
  assert generate("test_hard", 50, seed=1) != generate("test_hard", 50)


def test_generator_names_bad_settings():
  with pytest.raises(ValueError, match="easy_digits < hard_digits"):
    generate("train", 1, hard_digits=2)
  with pytest.raises(ValueError, match="split must be one of"):
    generate("valid", 1)
  with pytest.raises(ValueError, match="hard_fraction"):
    generate("train", 1, hard_fraction=1.5)
  with pytest.raises(ValueError, match="ask for fewer"):
    generate("test", 10_000, easy_digits=1, hard_digits=2)


@pytest.fixture
def cfg(tmp_path):
  return pipeline.DataConfig(task="addition", data_dir=str(tmp_path), max_digits=2,
                             hard_digits=3, hard_fraction=0.5, num_train=400, num_test=64,
                             max_prompt_len=9, max_answer_len=5, eval_splits=("test_hard",))


def test_the_training_iterator_never_sees_a_hard_answer(cfg):
  tok = tok_lib.tokenizer_for(cfg)
  assert sorted(pipeline.prepare(cfg).info.splits) == ["test", "test_hard", "train"]
  it = pipeline.train_iterator(cfg, tok, 50)
  seen_hard = 0
  for _ in range(16):  # two epochs
    batch = next(it)
    for prompt, prompt_mask, answer_mask, demo_mask in zip(
        batch["prompt_tokens"], batch["prompt_mask"], batch["answer_mask"],
        batch["demo_mask"]):
      text = tok.decode(prompt[prompt_mask][1:])
      hard = addition.is_hard_prompt(text, 2)
      seen_hard += hard
      assert answer_mask.any() != hard and demo_mask.any() != hard, text
  assert seen_hard > 100
  gold = pipeline.eval_batches(cfg, tok, "test_hard", 32)
  assert all(b["answer_mask"][b["valid"]].any(axis=1).all() for b in gold)


@pytest.mark.parametrize("overrides, message", [
    (dict(hard_digits=2), "data.hard_digits \\(2\\) must exceed data.max_digits"),
    (dict(hard_fraction=-0.1), "data.hard_fraction"),
    (dict(max_prompt_len=8), "max_prompt_len=8 is too small for data.hard_digits=3"),
    (dict(eval_splits=("test",)), "data.eval_splits: 'test'"),
    (dict(eval_splits=("test_hard", "test_hard")), "repeats"),
    (dict(hard_digits=0, eval_splits=("test_hard",)), "data.eval_splits names \\['test_hard'\\]"),
    (dict(hard_digits=-1), "data.hard_digits must be >= 0"),
])
def test_bad_settings_are_named(cfg, overrides, message):
  with pytest.raises(ValueError, match=message):
    dataclasses.replace(cfg, **overrides).validate()


def test_default_addition_is_unchanged_without_hard_digits(tmp_path):
  plain = pipeline.DataConfig(task="addition", data_dir=str(tmp_path), num_train=64,
                              num_test=16)
  assert sorted(pipeline.prepare(plain).info.splits) == ["test", "train"]
  rows = list(pipeline.load_split(plain, "train"))
  want = list(addition.generate_problems("train", 64, 3, 0.7, 0))
  assert [r["prompt"].decode() for r in rows] == [w["prompt"] for w in want]
  assert np.all([r["answer"] for r in rows])
