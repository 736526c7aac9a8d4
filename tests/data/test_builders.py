"""Tests for rlalign.data.builders (TFDS, array_record, built in tmp_path)."""

import json

import pytest
import tensorflow_datasets as tfds

from rlalign.data import addition, builders


def _build(builder_cls, config, data_dir):
  builder = builder_cls(config=config, data_dir=str(data_dir), file_format="array_record")
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(try_download_gcs=False)
  )
  return builder


def _records(builder, split):
  source = builder.as_data_source(split=split)
  return [
      {k: v.decode() if isinstance(v, bytes) else v.tolist() if k == "step_labels" else v
       for k, v in source[i].items()}
      for i in range(len(source))
  ]


_NONE = {"answer": "", "demonstration": "", "chosen": "", "rejected": "", "completion": "",
         "label": False, "step_labels": []}


def _write(path, lines):
  path.write_text("\n".join(lines) + "\n")
  return str(path)


def test_addition_config_name_encodes_every_setting():
  kwargs = dict(max_digits=2, carry_drop=0.5, num_train=20, num_test=10, seed=3)
  config = builders.AdditionConfig.create(**kwargs)
  assert config.name == "d2-drop0.5-train20-test10-seed3"
  names = {config.name}
  for key, value in [
      ("max_digits", 3),
      ("carry_drop", 0.55),
      ("num_train", 21),
      ("num_test", 11),
      ("seed", 4),
  ]:
    names.add(builders.AdditionConfig.create(**{**kwargs, key: value}).name)
  assert len(names) == 6


def test_addition_prompts_end_to_end(tmp_path):
  config = builders.AdditionConfig.create(
      max_digits=2, carry_drop=0.5, num_train=30, num_test=8, seed=1
  )
  builder = _build(builders.AdditionPrompts, config, tmp_path)
  assert builder.name == "rlalign_addition"
  assert (tmp_path / "rlalign_addition" / config.name / str(builders.AdditionPrompts.VERSION)).is_dir()
  assert {s: builder.info.splits[s].num_examples for s in ("train", "test")} == {
      "train": 30,
      "test": 8,
  }
  for split, num in (("train", 30), ("test", 8)):
    # Records are stored in generation order.
    expected = [{**_NONE, **p} for p in addition.generate_problems(split, num, 2, 0.5, 1)]
    assert _records(builder, split) == expected


def test_jsonl_prompts_end_to_end(tmp_path):
  train = _write(
      tmp_path / "train.jsonl",
      [
          json.dumps({"prompt": "Say hi", "answer": "hi", "demonstration": "hi!"}),
          "",  # Blank lines are skipped.
          json.dumps({"prompt": "Count: 1 2", "answer": "3", "id": 7}),
          "   ",
          json.dumps({"prompt": "Free form"}),
          json.dumps({"prompt": "2+2=", "chosen": "4", "rejected": "5"}),
          json.dumps({"prompt": "1+1=", "completion": "2", "label": True}),
          json.dumps({"prompt": "1+1=", "completion": "3", "label": False}),
      ],
  )
  test = _write(tmp_path / "test.jsonl", [json.dumps({"prompt": "Q", "answer": "A"})])
  config = builders.JsonlConfig.create(train, test)
  builder = _build(builders.JsonlPrompts, config, tmp_path / "data")
  assert builder.name == "rlalign_jsonl_prompts"
  # Every record keeps its 1-based line in the file, blank lines counted.
  assert _records(builder, "train") == [
      {**_NONE, "prompt": "Say hi", "answer": "hi", "demonstration": "hi!", "line": 1},
      {**_NONE, "prompt": "Count: 1 2", "answer": "3", "line": 3},
      {**_NONE, "prompt": "Free form", "line": 5},
      {**_NONE, "prompt": "2+2=", "chosen": "4", "rejected": "5", "line": 6},
      {**_NONE, "prompt": "1+1=", "completion": "2", "label": True, "line": 7},
      {**_NONE, "prompt": "1+1=", "completion": "3", "label": False, "line": 8},
  ]
  assert _records(builder, "test") == [{**_NONE, "prompt": "Q", "answer": "A", "line": 1}]


def test_jsonl_without_test_path_has_only_train(tmp_path):
  train = _write(tmp_path / "train.jsonl", [json.dumps({"prompt": "p"})])
  builder = _build(builders.JsonlPrompts, builders.JsonlConfig.create(train), tmp_path)
  assert set(builder.info.splits.keys()) == {"train"}


def test_jsonl_config_name_hashes_contents(tmp_path):
  path = tmp_path / "train.jsonl"
  _write(path, [json.dumps({"prompt": "a"})])
  first = builders.JsonlConfig.create(str(path))
  assert first.name.startswith("jsonl-") and len(first.name) == len("jsonl-") + 12
  # Same contents elsewhere: same name; edited contents: new name.
  copy = _write(tmp_path / "copy.jsonl", [json.dumps({"prompt": "a"})])
  assert builders.JsonlConfig.create(copy).name == first.name
  _write(path, [json.dumps({"prompt": "b"})])
  assert builders.JsonlConfig.create(str(path)).name != first.name
  # Moving lines between train and test changes the name, even though the
  # concatenated bytes are the same.
  a, b = json.dumps({"prompt": "a"}), json.dumps({"prompt": "b"})
  both = _write(tmp_path / "both.jsonl", [a, b])
  train = _write(tmp_path / "a.jsonl", [a])
  test = _write(tmp_path / "b.jsonl", [b])
  assert (
      builders.JsonlConfig.create(both).name
      != builders.JsonlConfig.create(train, test).name
  )


def test_edited_jsonl_file_is_rebuilt(tmp_path):
  path = tmp_path / "train.jsonl"
  data_dir = tmp_path / "data"
  _write(path, [json.dumps({"prompt": "old"})])
  old = _build(builders.JsonlPrompts, builders.JsonlConfig.create(str(path)), data_dir)
  _write(path, [json.dumps({"prompt": "new"})])
  new = _build(builders.JsonlPrompts, builders.JsonlConfig.create(str(path)), data_dir)
  assert _records(old, "train")[0]["prompt"] == "old"
  assert _records(new, "train")[0]["prompt"] == "new"


@pytest.mark.parametrize(
    "lines, bad_line, expected",
    [
        (['{"prompt": "ok"}', '{"prompt": "a",'], 2, "invalid JSON"),
        (['["prompt"]'], 1, "expected a JSON object"),
        (['{"prompt": "ok"}', '"just a string"'], 2, "expected a JSON object"),
        (['{"answer": "x"}'], 1, 'missing required key "prompt"'),
        (['{"prompt": 3}'], 1, '"prompt" must be a string, got int'),
        (['{"prompt": null}'], 1, '"prompt" must be a string, got NoneType'),
        (['{"prompt": ""}'], 1, '"prompt" must be a non-empty string'),
        (['{"prompt": "a", "answer": 1}'], 1, '"answer" must be a string'),
        (['{"prompt": "a", "demonstration": ["x"]}'], 1, '"demonstration" must be a string'),
        (["", "", '{"prompt": 1}'], 3, '"prompt" must be a string'),  # Counts blanks.
        (['{"prompt": "a", "chosen": "x"}'], 1, 'needs both "chosen" and "rejected"'),
        (['{"prompt": "a", "rejected": 2}'], 1, '"rejected" must be a string'),
        # A pair with one side missing or empty names the side it has.
        (['{"prompt": "a", "rejected": "y"}'], 1, 'got only "rejected"'),
        (['{"prompt": "a", "chosen": "", "rejected": "y"}'], 1, 'got only "rejected"'),
        (['{"prompt": "a", "chosen": "x", "rejected": ""}'], 1, 'got only "chosen"'),
        # No preference.
        (['{"prompt": "ok"}', '{"prompt": "a", "chosen": "x", "rejected": "x"}'], 2,
         '"chosen" and "rejected" are the same (no preference): \'x\''),
        # Responses that are only whitespace.
        (['{"prompt": "a", "chosen": " \\n", "rejected": "y"}'], 1,
         '"chosen" is only whitespace'),
        (['{"prompt": "a", "chosen": "x", "rejected": "\\t"}'], 1,
         '"rejected" is only whitespace'),
        (['{"prompt": "a", "completion": "  ", "label": true}'], 1,
         '"completion" is only whitespace'),
        # Duplicate keys: rejected, not "last one wins", at any depth.
        (['{"prompt": "a", "prompt": "b"}'], 1, "duplicate key 'prompt'"),
        (['{"prompt": "a", "chosen": "x", "rejected": "y", "chosen": "z"}'], 1,
         "duplicate key 'chosen'"),
        (['{"prompt": "a", "meta": {"id": 1, "id": 2}}'], 1, "duplicate key 'id'"),
        # Unpaired labelled completions: both or neither, and the label a JSON bool.
        (['{"prompt": "a", "completion": "x"}'], 1,
         'needs both "completion" and "label" (an empty string counts as none), got only'
         ' "completion"'),
        (['{"prompt": "a", "label": true}'], 1, 'got only "label"'),
        (['{"prompt": "a", "completion": "", "label": false}'], 1, 'got only "label"'),
        (['{"prompt": "a", "completion": "x", "label": 1}'], 1,
         '"label" must be true or false, got int'),
        (['{"prompt": "a", "completion": "x", "label": "true"}'], 1,
         '"label" must be true or false, got str'),
        (['{"prompt": "a", "completion": "x", "label": null}'], 1,
         '"label" must be true or false, got NoneType'),
        (['{"prompt": "a", "completion": 5, "label": true}'], 1,
         '"completion" must be a string, got int'),
        # Nesting deeper than any record needs, refused before json.loads recurses.
        (['{"prompt": "a", "meta": ' + "[" * 100_000 + "]" * 100_000 + "}"], 1,
         "JSON nested 100001 levels deep (at most 32)"),
        (["[" * 50_000], 1, "JSON nested 50000 levels deep"),
    ],
)
def test_bad_jsonl_lines_name_file_and_line(tmp_path, lines, bad_line, expected):
  path = _write(tmp_path / "prompts.jsonl", lines)
  with pytest.raises(ValueError) as e:
    builders.JsonlConfig.create(path)
  message = str(e.value)
  assert message.startswith(f"{path}:{bad_line}: ")
  assert expected in message
  assert "\n" not in message and len(message) < len(path) + 200


def test_long_values_in_errors_are_shortened(tmp_path):
  long = "x" * 500
  path = _write(tmp_path / "prompts.jsonl",
                [json.dumps({"prompt": "a", "chosen": long, "rejected": long})])
  with pytest.raises(ValueError) as e:
    builders.JsonlConfig.create(path)
  message = str(e.value)
  assert message == (f"{path}:1: \"chosen\" and \"rejected\" are the same (no preference):"
                     f" '{'x' * 60}'... (500 characters)")
  key = "k" * 200
  path = _write(tmp_path / "keys.jsonl", ['{"prompt": "a", "%s": 1, "%s": 2}' % (key, key)])
  with pytest.raises(ValueError, match=r":1: duplicate key 'k{60}'\.\.\. \(200 characters\)"):
    builders.JsonlConfig.create(path)


def test_shorten():
  assert builders.shorten("abc") == "'abc'"
  assert builders.shorten("a\nb") == "'a\\nb'"  # one line
  assert builders.shorten("y" * 60) == repr("y" * 60)
  assert builders.shorten("y" * 61) == repr("y" * 60) + "... (61 characters)"


def test_nesting_is_bounded_without_recursion():
  # Brackets inside strings (escaped quotes included) do not count as nesting.
  text = "[{" * 100 + '\\"'
  record = builders._parse_jsonl_line("f", 1, json.dumps({"prompt": text, "n": [[[1]]]}))
  assert record["prompt"] == text
  depth = builders._MAX_NESTING
  ok = '{"prompt": "a", "m": ' + "[" * (depth - 1) + "]" * (depth - 1) + "}"
  assert builders._parse_jsonl_line("f", 1, ok)["prompt"] == "a"
  with pytest.raises(ValueError, match=f"f:4: JSON nested {depth + 1} levels deep"):
    builders._parse_jsonl_line("f", 4, '{"prompt": "a", "m": ' + "[" * depth + "]" * depth + "}")


def test_recursion_error_becomes_a_value_error(monkeypatch):
  # Were the pre-scan to miss a deep line, json.loads' RecursionError is still one line.
  monkeypatch.setattr(builders, "_MAX_NESTING", 10**9)
  line = '{"prompt": "a", "m": ' + "[" * 100_000 + "]" * 100_000 + "}"
  with pytest.raises(ValueError, match=r"^f:2: JSON nested too deep$"):
    builders._parse_jsonl_line("f", 2, line)


def test_ignored_keys_may_hold_any_json(tmp_path):
  path = _write(tmp_path / "p.jsonl", [json.dumps({"prompt": "a", "id": 7, "meta": {"x": [1]},
                                                   "score": 0.5, "tag": None})])
  (record,) = builders.read_jsonl(path)
  assert record == {**_NONE, "prompt": "a", "line": 1}


def test_bad_test_file_is_named(tmp_path):
  train = _write(tmp_path / "train.jsonl", ['{"prompt": "ok"}'])
  test = _write(tmp_path / "test.jsonl", ['{"prompt": "ok"}', "{"])
  with pytest.raises(ValueError, match=f"{test}:2: invalid JSON"):
    builders.JsonlConfig.create(train, test)


def test_jsonl_without_examples(tmp_path):
  path = _write(tmp_path / "empty.jsonl", ["", "  "])
  with pytest.raises(ValueError) as e:
    builders.JsonlConfig.create(path)
  assert path in str(e.value) and "no examples" in str(e.value)


def test_missing_jsonl_file(tmp_path):
  path = str(tmp_path / "nope.jsonl")
  with pytest.raises(FileNotFoundError) as e:
    builders.JsonlConfig.create(path)
  assert path in str(e.value)


def test_file_broken_after_config_leaves_no_dataset_dir(tmp_path):
  path = tmp_path / "train.jsonl"
  data_dir = tmp_path / "data"
  _write(path, ['{"prompt": "ok"}'])
  config = builders.JsonlConfig.create(str(path))
  _write(path, ['{"prompt": "ok"}', '{"prompt": 5}'])
  with pytest.raises(ValueError, match=f"{path}:2:"):
    _build(builders.JsonlPrompts, config, data_dir)
  assert not list(data_dir.glob("rlalign_jsonl_prompts/*/*"))
  # An edit that is still valid is caught too, instead of caching it under
  # the old contents' name.
  _write(path, ['{"prompt": "edited"}'])
  with pytest.raises(ValueError, match="changed"):
    _build(builders.JsonlPrompts, config, data_dir)
  assert not list(data_dir.glob("rlalign_jsonl_prompts/*/*"))


def test_jsonl_step_labels(tmp_path):
  path = _write(tmp_path / "steps.jsonl", [
      json.dumps({"prompt": "1+1=", "completion": "1+1", "step_labels": [1, 0.5]}),
      json.dumps({"prompt": "1+1=", "completion": "2", "step_labels": [True]}),
      json.dumps({"prompt": "1+1=", "completion": "2", "step_labels": [1], "label": False})])
  first, second, third = builders.read_jsonl(path)
  assert first["step_labels"] == [1.0, 0.5] and first["label"] is False  # a step is doubtful
  assert second["step_labels"] == [1.0] and second["label"] is True
  assert third["label"] is False  # an explicit label wins


@pytest.mark.parametrize("record, message", [
    ({"completion": "2", "step_labels": []}, "must be a non-empty list"),
    ({"completion": "2", "step_labels": "1"}, "must be a non-empty list"),
    ({"completion": "2", "step_labels": [1, 2]}, r"\"step_labels\"\[1\] must be a number in"),
    ({"completion": "2", "step_labels": [None]}, r"\"step_labels\"\[0\] must be a number in"),
    ({"step_labels": [1]}, "needs both \"completion\" and \"label\""),
])
def test_bad_jsonl_step_labels_name_the_line(tmp_path, record, message):
  path = _write(tmp_path / "bad.jsonl", ['{"prompt": "ok"}', json.dumps({"prompt": "a", **record})])
  with pytest.raises(ValueError, match=f"{path}:2: .*{message}"):
    builders.read_jsonl(path)
