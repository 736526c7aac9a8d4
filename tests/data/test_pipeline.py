"""Tests for rlalign.data.pipeline (datasets built in tmp dirs)."""

import collections
import dataclasses
import json

import numpy as np
import pytest

from rlalign.data import addition, pipeline
from rlalign.data.pipeline import DataConfig
from rlalign.data.tokenizer import tokenizer_for

_FIELDS = {
    "prompt_tokens": (np.int32, 12),
    "prompt_mask": (np.bool_, 12),
    "answer_tokens": (np.int32, 6),
    "answer_mask": (np.bool_, 6),
    "demo_tokens": (np.int32, 6),
    "demo_mask": (np.bool_, 6),
    "chosen_tokens": (np.int32, 6),
    "chosen_mask": (np.bool_, 6),
    "rejected_tokens": (np.int32, 6),
    "rejected_mask": (np.bool_, 6),
    "completion_tokens": (np.int32, 6),
    "completion_mask": (np.bool_, 6),
    "labels": (np.float32, None),  # one per row
    "step_labels": (np.float32, 6),
}


def _shape(rows, length):
  return (rows,) if length is None else (rows, length)


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
  """A small addition dataset, built once for this module."""
  cfg = DataConfig(
      data_dir=str(tmp_path_factory.mktemp("tfds")),
      max_digits=2,
      carry_drop=0.5,
      num_train=40,
      num_test=10,
      seed=5,
  )
  pipeline.prepare(cfg)
  return cfg


def _prompts(tokenizer, batch):
  return [tokenizer.decode(row) for row in batch["prompt_tokens"]]


# --- DataConfig.validate -------------------------------------------------


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"task": "x"}, "data.task must be one of ('addition', 'rubric', 'jsonl', 'tfds', 'hf'), got 'x'"),
        ({"data_dir": ""}, "data.data_dir"),
        ({"task": "jsonl"}, "data.train_path is required when data.task='jsonl'"),
        ({"max_prompt_len": 0}, "data.max_prompt_len"),
        ({"max_answer_len": 0}, "data.max_answer_len"),
        ({"seed": -1}, "data.seed"),
        ({"carry_drop": 1.5}, "data.carry_drop"),
        ({"carry_drop": -0.1}, "data.carry_drop"),
        ({"max_digits": 0}, "data.max_digits"),
        ({"num_train": 0}, "data.num_train"),
        ({"num_test": 0}, "data.num_test"),
        # 5-digit operands need BOS + 5 + "+" + 5 + "=" = 13 prompt tokens.
        ({"max_digits": 5}, "data.max_prompt_len=12 is too small"),
        # 5-digit sums have up to 6 digits, plus EOS = 7 answer tokens.
        ({"max_digits": 5, "max_prompt_len": 13}, "data.max_answer_len=6 is too small"),
    ],
)
def test_validate_names_the_bad_field(overrides, message):
  cfg = dataclasses.replace(DataConfig(data_dir="/tmp/unused"), **overrides)
  with pytest.raises(ValueError) as e:
    cfg.validate()
  assert message in str(e.value)


def test_validate_accepts_good_configs():
  DataConfig(data_dir="d").validate()
  # Tightest lengths for 4 digits: 2 * 4 + 3 prompt and 4 + 2 answer tokens.
  DataConfig(data_dir="d", max_digits=4, max_prompt_len=11, max_answer_len=6).validate()
  DataConfig(data_dir="d", task="jsonl", train_path="t.jsonl").validate()
  DataConfig(data_dir="d", carry_drop=0.0).validate()
  DataConfig(data_dir="d", carry_drop=1.0).validate()


# --- encode_example --------------------------------------------------------


def test_encode_example_layout():
  cfg = DataConfig(max_prompt_len=8, max_answer_len=5)
  tok = tokenizer_for(cfg)
  out = pipeline.encode_example(
      {"prompt": b"74+58=", "answer": b"231", "demonstration": "22"}, tok, cfg
  )
  np.testing.assert_array_equal(out["prompt_tokens"], [0, 1, 10, 7, 13, 8, 11, 14])
  np.testing.assert_array_equal(out["prompt_mask"], [0, 1, 1, 1, 1, 1, 1, 1])
  np.testing.assert_array_equal(out["answer_tokens"], [5, 6, 4, 2, 0])
  np.testing.assert_array_equal(out["answer_mask"], [1, 1, 1, 1, 0])
  np.testing.assert_array_equal(out["demo_tokens"], [5, 5, 2, 0, 0])
  np.testing.assert_array_equal(out["demo_mask"], [1, 1, 1, 0, 0])
  np.testing.assert_array_equal(out["completion_tokens"], [0, 0, 0, 0, 0])
  assert not out["completion_mask"].any()
  assert out["labels"].shape == () and out["labels"] == 0
  for key, value in out.items():
    want = (np.float32 if key.endswith("labels") else np.bool_ if key.endswith("mask")
            else np.int32)
    assert value.dtype == want, key
  np.testing.assert_array_equal(out["step_labels"], [-1] * 5)  # no step labels


@pytest.mark.parametrize("label, want", [(True, 1.0), (False, 0.0), (np.bool_(True), 1.0)])
def test_encode_example_unpaired_completion(label, want):
  cfg = DataConfig(max_prompt_len=8, max_answer_len=5)
  tok = tokenizer_for(cfg)
  out = pipeline.encode_example(
      {"prompt": b"74+58=", "completion": b"231", "label": label}, tok, cfg
  )
  np.testing.assert_array_equal(out["completion_tokens"], [5, 6, 4, 2, 0])
  np.testing.assert_array_equal(out["completion_mask"], [1, 1, 1, 1, 0])
  assert out["labels"].dtype == np.float32 and out["labels"] == want
  # A label without a completion is no example: 0, all-false mask.
  out = pipeline.encode_example({"prompt": b"74+58=", "label": True}, tok, cfg)
  assert out["labels"] == 0 and not out["completion_mask"].any()


def test_encode_example_empty_demonstration_and_exact_fit():
  cfg = DataConfig(max_prompt_len=7, max_answer_len=3)
  tok = tokenizer_for(cfg)
  out = pipeline.encode_example(
      {"prompt": b"1+23=1", "answer": b"45", "demonstration": b""}, tok, cfg
  )
  # Prompt and answer fill their rows exactly: no padding at all.
  np.testing.assert_array_equal(out["prompt_tokens"], [1, 4, 13, 5, 6, 14, 4])
  assert out["prompt_mask"].all()
  np.testing.assert_array_equal(out["answer_tokens"], [7, 8, 2])
  np.testing.assert_array_equal(out["demo_tokens"], [0, 0, 0])
  assert not out["demo_mask"].any()


def test_encode_example_errors():
  cfg = DataConfig(max_prompt_len=6, max_answer_len=3)
  tok = tokenizer_for(cfg)
  with pytest.raises(ValueError) as e:
    pipeline.encode_example({"prompt": "12+34="}, tok, cfg)
  assert "data.max_prompt_len=6" in str(e.value)
  assert "needs 7 tokens" in str(e.value) and "'12+34='" in str(e.value)
  with pytest.raises(ValueError, match="prompt is empty"):
    pipeline.encode_example({"prompt": ""}, tok, cfg)
  with pytest.raises(ValueError, match=r'"answer" needs 4 tokens .*data.max_answer_len=3'):
    pipeline.encode_example({"prompt": "1+1=", "answer": "123"}, tok, cfg)
  with pytest.raises(ValueError, match='"demonstration" .*data.max_answer_len'):
    pipeline.encode_example({"prompt": "1+1=", "demonstration": "1234"}, tok, cfg)
  with pytest.raises(ValueError, match='"completion" needs 5 tokens'):
    pipeline.encode_example({"prompt": "1+1=", "completion": "1234", "label": True}, tok, cfg)
  with pytest.raises(ValueError, match="^\"prompt\": .*'a'"):
    pipeline.encode_example({"prompt": "a+1="}, tok, cfg)
  with pytest.raises(ValueError, match="^\"rejected\": .*'x'"):
    pipeline.encode_example({"prompt": "1+1=", "chosen": "2", "rejected": "x"}, tok, cfg)
  # Long values are cut to 60 characters and their length.
  with pytest.raises(ValueError) as e:
    pipeline.encode_example({"prompt": "1+1=", "chosen": "1" * 100}, tok, cfg)
  assert str(e.value) == ('"chosen" needs 101 tokens (incl. EOS) but data.max_answer_len=3: '
                          f"'{'1' * 60}'... (100 characters)")


def test_validate_split_names_split_and_record():
  cfg = DataConfig(max_prompt_len=6)
  tok = tokenizer_for(cfg)
  source = [{"prompt": b"1+2="}, {"prompt": b"3+4="}, {"prompt": b"123+45="}]
  pipeline.validate_split(source[:2], tok, cfg, "train")
  with pytest.raises(ValueError) as e:
    pipeline.validate_split(source, tok, cfg, "train")
  assert "train split, record 2:" in str(e.value)
  assert "data.max_prompt_len=6" in str(e.value)
  with pytest.raises(ValueError, match="test split is empty"):
    pipeline.validate_split([], tok, cfg, "test")


# --- Addition end to end ----------------------------------------------------


def test_prepare_and_load_split(cfg):
  tok = tokenizer_for(cfg)
  train = pipeline.load_split(cfg, "train")
  test = pipeline.load_split(cfg, "test")
  assert (len(train), len(test)) == (40, 10)
  pipeline.validate_split(train, tok, cfg, "train")
  expected = list(addition.generate_problems("test", 10, 2, 0.5, 5))
  assert [test[i]["prompt"].decode() for i in range(10)] == [
      p["prompt"] for p in expected
  ]
  with pytest.raises(ValueError, match="'validation' does not exist"):
    pipeline.load_split(cfg, "validation")


def test_train_iterator_batches(cfg):
  tok = tokenizer_for(cfg)
  batch = next(pipeline.train_iterator(cfg, tok, batch_size=8))
  assert set(batch) == set(_FIELDS)
  for key, (dtype, length) in _FIELDS.items():
    assert batch[key].shape == _shape(8, length) and batch[key].dtype == dtype, key
  train = pipeline.load_split(cfg, "train")
  by_prompt = {train[i]["prompt"].decode(): train[i] for i in range(len(train))}
  for row in range(8):
    prompt = tok.decode(batch["prompt_tokens"][row])
    assert tok.decode(batch["answer_tokens"][row]) == by_prompt[prompt]["answer"].decode()
    assert tok.decode(batch["demo_tokens"][row]) == by_prompt[prompt]["demonstration"].decode()


def test_train_iterator_resumes_exactly(cfg):
  tok = tokenizer_for(cfg)
  it = pipeline.train_iterator(cfg, tok, batch_size=4)
  first = [next(it) for _ in range(5)]
  state = json.loads(json.dumps(it.get_state()))  # Must survive JSON.
  expected = [next(it) for _ in range(3)]
  resumed = pipeline.train_iterator(cfg, tok, batch_size=4)
  resumed.set_state(state)
  for want, got in zip(expected, [next(resumed) for _ in range(3)]):
    for key in want:
      np.testing.assert_array_equal(got[key], want[key])
  # Guards the check above: a restart without the state yields other batches.
  assert _prompts(tok, first[0]) != _prompts(tok, expected[0])


def test_train_iterator_epochs_shards_and_seeds(cfg):
  tok = tokenizer_for(cfg)
  train = pipeline.load_split(cfg, "train")
  all_prompts = collections.Counter(train[i]["prompt"].decode() for i in range(40))

  def epochs(num_epochs, **kwargs):
    it = pipeline.train_iterator(cfg, tok, batch_size=4, **kwargs)
    per_epoch = 40 // kwargs.get("shard_count", 1) // 4
    return [
        sum((_prompts(tok, next(it)) for _ in range(per_epoch)), [])
        for _ in range(num_epochs)
    ]

  first, second = epochs(2)
  assert collections.Counter(first) == collections.Counter(second) == all_prompts
  assert first != second  # Reshuffled every epoch.
  # Two shards read the halves of each global batch: together, exactly one host's batches.
  it0 = pipeline.train_iterator(cfg, tok, 4, shard_index=0, shard_count=2)
  it1 = pipeline.train_iterator(cfg, tok, 4, shard_index=1, shard_count=2)
  sharded = sum((_prompts(tok, next(it0)) + _prompts(tok, next(it1)) for _ in range(10)), [])
  assert sharded == first
  with pytest.raises(ValueError, match="does not split evenly"):
    pipeline.train_iterator(cfg, tok, 5, shard_index=0, shard_count=2)
  assert epochs(1, seed=99)[0] != first
  with pytest.raises(ValueError, match="shard_index"):
    pipeline.train_iterator(cfg, tok, 4, shard_index=2, shard_count=2)


def test_eval_batches_cover_split_in_order_with_padding(cfg):
  tok = tokenizer_for(cfg)
  batches = pipeline.eval_batches(cfg, tok, "test", batch_size=4)
  assert len(batches) == 3
  np.testing.assert_array_equal(
      np.concatenate([b["valid"] for b in batches]), [1] * 10 + [0, 0]
  )
  test = pipeline.load_split(cfg, "test")
  prompts = sum((_prompts(tok, b) for b in batches), [])
  expected = [test[i]["prompt"].decode() for i in range(10)]
  assert prompts == expected + [expected[-1]] * 2
  last = batches[-1]
  for key in _FIELDS:
    assert last[key].shape[0] == 4
    np.testing.assert_array_equal(last[key][3], last[key][1])


# --- JSONL end to end ---------------------------------------------------------


def _write_jsonl(path, records):
  """One line per record; a string is written as is (a blank or raw line)."""
  path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n"
                          for r in records))
  return str(path)


def _jsonl_cfg(tmp_path, records, test_records=None, **overrides):
  train = _write_jsonl(tmp_path / "train.jsonl", records)
  test = "" if test_records is None else _write_jsonl(tmp_path / "test.jsonl", test_records)
  return DataConfig(
      task="jsonl",
      data_dir=str(tmp_path / "tfds"),
      train_path=train,
      test_path=test,
      max_prompt_len=16,
      max_answer_len=8,
      **overrides,
  )


def test_jsonl_end_to_end(tmp_path):
  records = [
      {"prompt": "What is 2+2?", "answer": "4"},
      {"prompt": "Say hi.\n", "demonstration": "hi"},
      {"prompt": "Name a color:", "answer": "red"},
  ]
  cfg = _jsonl_cfg(tmp_path, records)
  tok = tokenizer_for(cfg)
  (batch,) = pipeline.eval_batches(cfg, tok, "train", batch_size=4)
  assert _prompts(tok, batch) == [r["prompt"] for r in records] + ["Name a color:"]
  assert [tok.decode(a) for a in batch["answer_tokens"]] == ["4", "", "red", "red"]
  np.testing.assert_array_equal(batch["demo_mask"][1], [1, 1, 1, 0, 0, 0, 0, 0])
  np.testing.assert_array_equal(batch["valid"], [1, 1, 1, 0])
  train_batch = next(pipeline.train_iterator(cfg, tok, batch_size=2))
  assert train_batch["prompt_tokens"].shape == (2, 16)
  with pytest.raises(ValueError, match="data.test_path"):
    pipeline.load_split(cfg, "test")


def test_jsonl_prompt_too_long_names_file_line_and_max_prompt_len(tmp_path):
  cfg = _jsonl_cfg(tmp_path, [{"prompt": "short"}, {"prompt": "x" * 16}])
  tok = tokenizer_for(cfg)
  with pytest.raises(ValueError) as e:
    pipeline.validate_split(pipeline.load_split(cfg, "train"), tok, cfg, "train")
  assert str(e.value) == (f'{cfg.train_path}:2: "prompt" needs 17 tokens (with BOS or chat'
                          f" template) but data.max_prompt_len=16: {'x' * 16!r}")


@pytest.mark.parametrize("key", ["chosen", "rejected", "completion", "answer",
                                 "demonstration"])
def test_jsonl_response_too_long_names_file_line_and_key(tmp_path, key):
  long = "y" * 200
  record = {"prompt": "p", "chosen": "a", "rejected": "b", "completion": "c", "label": True,
            key: long}
  # Line 4: blank lines count, as in the file the user edits.
  cfg = _jsonl_cfg(tmp_path, [{"prompt": "ok"}, "", {"prompt": "fine", "answer": "1"},
                              record])
  tok = tokenizer_for(cfg)
  train = pipeline.load_split(cfg, "train")
  for check in (lambda: pipeline.validate_split(train, tok, cfg, "train"),
                lambda: pipeline.eval_batches(cfg, tok, "train", batch_size=2)):
    with pytest.raises(ValueError) as e:
      check()
    assert str(e.value) == (
        f'{cfg.train_path}:4: "{key}" needs 201 tokens (incl. EOS) but'
        f" data.max_answer_len=8: {'y' * 60!r}... (200 characters)")


def test_jsonl_errors_in_the_test_split_name_the_test_file(tmp_path):
  cfg = _jsonl_cfg(tmp_path, [{"prompt": "ok"}],
                   [{"prompt": "q", "answer": "a"}, {"prompt": "q", "chosen": "z" * 9,
                                                     "rejected": "n"}])
  tok = tokenizer_for(cfg)
  pipeline.validate_split(pipeline.load_split(cfg, "train"), tok, cfg, "train")
  with pytest.raises(ValueError, match=f'^{cfg.test_path}:2: "chosen" needs 10 tokens'):
    pipeline.validate_split(pipeline.load_split(cfg, "test"), tok, cfg, "test")


def test_train_iterator_errors_name_file_and_line(tmp_path):
  # Without validate_split first, an encode error during training still names the line.
  cfg = _jsonl_cfg(tmp_path, [{"prompt": "p", "completion": "c" * 9, "label": False}])
  tok = tokenizer_for(cfg)
  with pytest.raises(ValueError, match=f'{cfg.train_path}:1: "completion" needs 10 tokens'):
    next(pipeline.train_iterator(cfg, tok, batch_size=1))


def test_jsonl_unpaired_completions_end_to_end(tmp_path):
  records = [
      {"prompt": "2+2=", "completion": "4", "label": True},
      {"prompt": "2+2=", "completion": "5", "label": False},
      {"prompt": "3+3=", "completion": "6 ", "label": True},
      {"prompt": "no label", "answer": "x"},  # no completion: label 0, empty mask
  ]
  cfg = _jsonl_cfg(tmp_path, records, records)
  tok = tokenizer_for(cfg)
  want = {  # (prompt, completion) -> label
      ("2+2=", "4"): 1.0, ("2+2=", "5"): 0.0, ("3+3=", "6 "): 1.0, ("no label", ""): 0.0}

  def rows(batch):
    return {(tok.decode(p), tok.decode(c)): (float(label), mask)
            for p, c, label, mask in zip(batch["prompt_tokens"], batch["completion_tokens"],
                                         batch["labels"], batch["completion_mask"])}

  batch = next(pipeline.train_iterator(cfg, tok, batch_size=4))
  assert batch["completion_tokens"].shape == (4, 8)
  assert batch["completion_tokens"].dtype == np.int32
  assert batch["completion_mask"].shape == (4, 8) and batch["completion_mask"].dtype == np.bool_
  assert batch["labels"].shape == (4,) and batch["labels"].dtype == np.float32
  got = rows(batch)
  assert {k: v[0] for k, v in got.items()} == want  # every record once, shuffled
  # The completion mask covers the completion and its EOS: "6 " is 2 tokens + EOS.
  np.testing.assert_array_equal(got[("3+3=", "6 ")][1], [1, 1, 1, 0, 0, 0, 0, 0])
  assert not got[("no label", "")][1].any()
  (ordered,) = pipeline.eval_batches(cfg, tok, "test", batch_size=4)
  np.testing.assert_array_equal(ordered["labels"], [1, 0, 1, 0])
  assert [tok.decode(c) for c in ordered["completion_tokens"]] == ["4", "5", "6 ", ""]
  # The "scored" offline kind reads exactly these fields.
  from rlalign.rl import offline
  seqs = offline.to_sequences(batch, "scored")
  np.testing.assert_array_equal(seqs["completion_tokens"], batch["completion_tokens"])
  np.testing.assert_array_equal(seqs["mask"], batch["completion_mask"])
  np.testing.assert_array_equal(seqs["labels"], batch["labels"])


def test_jsonl_without_unpaired_fields_keeps_old_batches(tmp_path):
  cfg = _jsonl_cfg(tmp_path, [{"prompt": "a", "chosen": "x", "rejected": "y"}])
  tok = tokenizer_for(cfg)
  (batch,) = pipeline.eval_batches(cfg, tok, "train", batch_size=1)
  assert tok.decode(batch["chosen_tokens"][0]) == "x"
  assert tok.decode(batch["rejected_tokens"][0]) == "y"
  assert not batch["completion_mask"].any() and batch["labels"][0] == 0


def test_prepare_with_bad_jsonl_builds_nothing(tmp_path):
  cfg = _jsonl_cfg(tmp_path, [{"prompt": "ok"}, {"prompt": ""}])
  with pytest.raises(ValueError, match=f"{cfg.train_path}:2:"):
    pipeline.prepare(cfg)
  assert not list((tmp_path / "tfds").glob("rlalign_jsonl_prompts/*/*"))


def test_addition_unpaired_file_feeds_scored_batches(tmp_path):
  train, _ = addition.write_unpaired(str(tmp_path / "unpaired"), num_train=40, num_test=4,
                                     max_digits=2, seed=1)
  cfg = DataConfig(task="jsonl", data_dir=str(tmp_path / "tfds"), train_path=train,
                   max_prompt_len=7, max_answer_len=4)
  tok = tokenizer_for(cfg)
  batch = next(pipeline.train_iterator(cfg, tok, batch_size=16))
  assert 0 < batch["labels"].sum() < 16  # both labels in one batch
  assert batch["completion_mask"].any(axis=1).all()
  for completion, answer, label in zip(batch["completion_tokens"], batch["answer_tokens"],
                                       batch["labels"]):
    assert label == float(tok.decode(completion) == tok.decode(answer))


# ---------------------------------------------------------------- per-step labels (PRMs)


def test_step_labels_land_on_the_tokens_that_end_each_step():
  cfg = DataConfig(max_prompt_len=8, max_answer_len=8, step_delimiter="+")
  tok = tokenizer_for(cfg)
  out = pipeline.encode_example(
      {"prompt": "1+2=", "completion": "12+3+45", "step_labels": [1.0, 0.25, 0.0]}, tok, cfg)
  # "1 2 + 3 + 4 5 EOS": steps end at the two "+" and at EOS.
  np.testing.assert_array_equal(out["step_labels"], [-1, -1, 1.0, -1, 0.25, -1, -1, 0.0])
  # Where the PRM reward finds its steps: the same positions.
  import jax.numpy as jnp
  from rlalign.rewards import process
  ends = process.step_ends(jnp.asarray(out["completion_tokens"][None]),
                           jnp.asarray(out["completion_mask"][None]), tok.encode("+")[0])
  np.testing.assert_array_equal(np.asarray(ends[0]), out["step_labels"] >= 0)


@pytest.mark.parametrize("example, message", [
    ({"completion": "12+3", "step_labels": [1.0]}, r"has 1 labels but \"completion\" has 2"),
    ({"completion": "12+3", "step_labels": [1.0, 1.5]}, r"must lie in \[0, 1\]"),
    ({"step_labels": [1.0]}, r"\"completion\", which is empty"),
])
def test_bad_step_labels_are_named(example, message):
  cfg = DataConfig(max_prompt_len=8, max_answer_len=8, step_delimiter="+")
  with pytest.raises(ValueError, match=message):
    pipeline.encode_example({"prompt": "1+2=", **example}, tokenizer_for(cfg), cfg)


def test_a_multi_token_step_delimiter_is_refused():
  cfg = DataConfig(max_prompt_len=8, max_answer_len=8, step_delimiter="++")
  with pytest.raises(ValueError, match=r"data.step_delimiter='\+\+' is 2 tokens"):
    pipeline.encode_example({"prompt": "1+2=", "completion": "1++2", "step_labels": [1, 0]},
                            tokenizer_for(cfg), cfg)
