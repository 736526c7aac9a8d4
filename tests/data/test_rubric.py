"""The rubric task: prompts, the sloppy teacher and the gold judge, checked against a reading of
each prompt done here, through the generator, the TFDS builder and the training iterator."""
import dataclasses
import re

import numpy as np
import pytest

from rlalign.data import pipeline, rubric, tokenizer as tok_lib


def constraints(prompt):
  found = re.fullmatch(r"L(\d)F(\d)E(\d)H(\d):", prompt)
  return tuple(int(g) for g in found.groups())


def test_prompts_keys_and_the_gold_judge_agree_with_a_hand_reading():
  rows = list(rubric.generate("train", 500, 0.4, 0))
  for r in rows:
    n, f, e, h = constraints(r["prompt"])
    assert n in rubric.LENGTHS and r["answer"] == f"{n}{f}{e}{h}"
    assert rubric.spec_of(r["prompt"]) == (n, f, e, h)
  assert list(rubric.points((5, 3, 8, 7), "37218")) == [True, True, True, True, True]
  assert list(rubric.points((5, 3, 8, 7), "3721")) == [True, False, True, False, True]
  assert list(rubric.points((4, 3, 8, 7), "4x28")) == [False, True, False, True, False]
  assert list(rubric.points((4, 3, 8, 7), "")) == [False, False, False, False, False]


def test_the_teacher_errs_the_same_way_each_time_it_errs():
  rows = list(rubric.generate("train", 4000, 0.4, 0))
  met = np.array([rubric.points(constraints(r["prompt"]), r["demonstration"]) for r in rows])
  assert met[:, 0].all()  # always digits
  assert np.allclose(met[:, 1:].mean(0), 0.4, atol=0.05)
  for r, m in zip(rows, met):
    n, f, e, h = constraints(r["prompt"])
    d = r["demonstration"]
    assert len(d) == (n if m[1] else n + 1)
    if not m[4]:
      assert str(h) not in d
  # Imitation's most likely answer errs: the teacher's errors are its majority.
  assert (met[:, 1:].sum(1) == 4).mean() < 0.05


def test_held_out_constraints_are_disjoint_and_distinct():
  test = [r["prompt"] for r in rubric.generate("test", 256, 0.4, 0)]
  train = {r["prompt"] for r in rubric.generate("train", 3000, 0.4, 0)}
  assert len(set(test)) == 256 and not set(test) & train
  with pytest.raises(ValueError, match="only .* held-out constraint sets"):
    list(rubric.generate("test", 10_000, 0.4, 0))
  with pytest.raises(ValueError, match="not a rubric prompt"):
    rubric.spec_of("L5F3E8H:")


@pytest.fixture
def cfg(tmp_path):
  return pipeline.DataConfig(task="rubric", data_dir=str(tmp_path), num_train=200, num_test=32,
                             max_prompt_len=10, max_answer_len=8, alphabet="ascii")


def test_the_builder_and_iterator_carry_prompt_key_and_demonstration(cfg):
  tok = tok_lib.tokenizer_for(cfg)
  assert sorted(pipeline.prepare(cfg).info.splits) == ["test", "train"]
  batch = next(pipeline.train_iterator(cfg, tok, 16))
  for i in range(16):
    prompt = tok.decode(batch["prompt_tokens"][i][batch["prompt_mask"][i]][1:])
    answer = tok.decode(batch["answer_tokens"][i][batch["answer_mask"][i]][:-1])
    demo = tok.decode(batch["demo_tokens"][i][batch["demo_mask"][i]][:-1])
    assert answer == "".join(map(str, constraints(prompt))) and demo.isdigit()


@pytest.mark.parametrize("overrides, message", [
    (dict(honor=1.5), "data.honor"),
    (dict(max_prompt_len=9), "max_prompt_len=9 is too small for the rubric task"),
    (dict(max_answer_len=7), "max_answer_len=7 is too small for the rubric task"),
    (dict(eval_splits=("test_hard",)), "no extra held-out splits"),
])
def test_bad_settings_are_named(cfg, overrides, message):
  with pytest.raises(ValueError, match=message):
    dataclasses.replace(cfg, **overrides).validate()
