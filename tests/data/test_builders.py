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
      {k: v.decode() for k, v in source[i].items()} for i in range(len(source))
  ]


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
    expected = [{**p, "chosen": "", "rejected": ""}
                for p in addition.generate_problems(split, num, 2, 0.5, 1)]
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
      ],
  )
  test = _write(tmp_path / "test.jsonl", [json.dumps({"prompt": "Q", "answer": "A"})])
  config = builders.JsonlConfig.create(train, test)
  builder = _build(builders.JsonlPrompts, config, tmp_path / "data")
  assert builder.name == "rlalign_jsonl_prompts"
  no_pair = {"chosen": "", "rejected": ""}
  assert _records(builder, "train") == [
      {"prompt": "Say hi", "answer": "hi", "demonstration": "hi!", **no_pair},
      {"prompt": "Count: 1 2", "answer": "3", "demonstration": "", **no_pair},
      {"prompt": "Free form", "answer": "", "demonstration": "", **no_pair},
      {"prompt": "2+2=", "answer": "", "demonstration": "", "chosen": "4", "rejected": "5"},
  ]
  assert _records(builder, "test") == [{"prompt": "Q", "answer": "A", "demonstration": "",
                                        **no_pair}]


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
    ],
)
def test_bad_jsonl_lines_name_file_and_line(tmp_path, lines, bad_line, expected):
  path = _write(tmp_path / "prompts.jsonl", lines)
  with pytest.raises(ValueError) as e:
    builders.JsonlConfig.create(path)
  assert f"{path}:{bad_line}:" in str(e.value)
  assert expected in str(e.value)


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
