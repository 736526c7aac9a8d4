"""data.task="tfds": a user's own prepared TFDS dataset, read through the pipeline.

The builders here are defined in the test and prepared into tmp dirs (array_record, nothing
downloaded). TFDS registers builder classes globally by name, so the one registered class has
a name no other test uses; the others skip registration and are found from their files alone,
as a researcher's dataset is when its builder's module is not imported.
"""

import inspect
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

from rlalign.data import pipeline
from rlalign.data.pipeline import DataConfig
from rlalign.data.tokenizer import ASCII_ALPHABET, CharTokenizer

NAME = "rlalign_test_tfds_source_prefs"  # the registered builder's (unique) name
FILES_NAME = "rlalign_test_tfds_source_files"  # builders found from their files only
TOKENIZER = CharTokenizer(ASCII_ALPHABET)  # `tokenizer_for` knows only addition and jsonl

TRAIN = [("What is 2+2?", "4", "5"), ("Say hi.", "hi", "no"), ("Name a color:", "red", "dog"),
         ("1+1=", "2", "11")]
VALIDATION = [("3+3=", "6", "33"), ("Pick one:", "a", "b")]


def _rows(pairs):
  return [{"prompt": p, "chosen": c, "rejected": r} for p, c, r in pairs]


def _text_features(*keys):
  return {k: tfds.features.Text() for k in keys}


class _TestBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Prepares `SPLITS` ({split: [record]}) with `FEATURES` ({name: feature})."""

  VERSION = tfds.core.Version("1.0.0")
  FEATURES = {}
  SPLITS = {}

  # As in rlalign.data.builders: TFDS's own lookup needs `importlib_resources`.
  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls):
    return tfds.core.Path(inspect.getfile(cls))

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self, features=tfds.features.FeaturesDict(self.FEATURES),
        disable_shuffling=True)

  def _split_generators(self, dl_manager):
    del dl_manager
    return {split: self._generate_examples(rows) for split, rows in self.SPLITS.items()}

  def _generate_examples(self, rows):
    yield from enumerate(rows)


class RlalignTestTfdsSourcePrefs(_TestBuilder):
  """Registered (as NAME): prompt / chosen / rejected, plus a feature the pipeline ignores."""

  FEATURES = {**_text_features("prompt", "chosen", "rejected"),
              "scores": tfds.features.Tensor(shape=(None,), dtype=np.float32)}
  SPLITS = {
      split: [{**row, "scores": np.ones(i % 3, np.float32)} for i, row in enumerate(_rows(rows))]
      for split, rows in (("train", TRAIN), ("validation", VALIDATION))
  }


assert RlalignTestTfdsSourcePrefs.name == NAME


def _prepare(builder_cls, data_dir):
  builder = builder_cls(data_dir=str(data_dir), file_format="array_record")
  # As builders.py prepares its own: never look for a prebuilt copy on the network.
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  return builder


def _files_builder(data_dir, features, splits):
  """Prepares an unregistered builder named FILES_NAME under `data_dir`."""
  cls = type("FilesBuilder", (_TestBuilder,),
             {"name": FILES_NAME, "FEATURES": features, "SPLITS": splits},
             skip_registration=True)
  return _prepare(cls, data_dir)


def _cfg(data_dir, name=NAME, **overrides):
  overrides = {"tfds_test_split": "validation", **overrides}
  return DataConfig(task="tfds", data_dir=str(data_dir), tfds_name=name, max_prompt_len=16,
                    max_answer_len=6, **overrides)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  data_dir = tmp_path_factory.mktemp("tfds")
  _prepare(RlalignTestTfdsSourcePrefs, data_dir)
  return data_dir


def _decode(batch, key):
  return [TOKENIZER.decode(row) for row in batch[key]]


def _one_line_error(fn, *args, **kwargs) -> str:
  with pytest.raises(ValueError) as e:
    fn(*args, **kwargs)
  assert "\n" not in str(e.value), str(e.value)
  return str(e.value)


# --- DataConfig.validate -------------------------------------------------------


@pytest.mark.parametrize("overrides, message", [
    ({}, "data.tfds_name is required when data.task='tfds'"),
    ({"tfds_name": "/data/my_prefs/1.0.0"}, "data.tfds_name='/data/my_prefs/1.0.0' is not a"
                                            " TFDS name"),
    ({"tfds_name": "huggingface:imdb"}, "has a namespace ('huggingface':)"),
    ({"tfds_name": "my_prefs", "tfds_train_split": ""}, "data.tfds_train_split must name"),
    ({"tfds_name": "my_prefs", "tfds_test_split": ""}, "data.tfds_test_split must name"),
])
def test_validate_names_the_bad_tfds_field(overrides, message):
  cfg = DataConfig(task="tfds", data_dir="/tmp/unused", **overrides)
  assert message in _one_line_error(cfg.validate)


def test_validate_accepts_tfds_names():
  for name in ("my_prefs", "my_prefs/config", "my_prefs/config:1.0.0", "MyPrefs:1.*.*"):
    DataConfig(task="tfds", data_dir="d", tfds_name=name).validate()


# --- End to end ----------------------------------------------------------------


def _check_pairs(batch, pairs):
  assert _decode(batch, "prompt_tokens") == [p for p, _, _ in pairs]
  assert _decode(batch, "chosen_tokens") == [c for _, c, _ in pairs]
  assert _decode(batch, "rejected_tokens") == [r for _, _, r in pairs]


def test_registered_builder_end_to_end(data_dir):
  cfg = _cfg(data_dir)
  before = sorted(p for p, _, _ in os.walk(data_dir))
  assert pipeline.prepare(cfg).info.name == NAME
  (batch,) = pipeline.eval_batches(cfg, TOKENIZER, "train", batch_size=4)
  _check_pairs(batch, TRAIN)
  # "what is 2+2?" + EOS; chosen and rejected are right-padded to max_answer_len.
  np.testing.assert_array_equal(batch["chosen_mask"][0], [1, 1, 0, 0, 0, 0])
  np.testing.assert_array_equal(batch["rejected_mask"][3], [1, 1, 1, 0, 0, 0])
  for key in ("answer_mask", "demo_mask", "completion_mask"):  # features it lacks: empty
    assert not batch[key].any(), key
  np.testing.assert_array_equal(batch["labels"], [0, 0, 0, 0])
  # The test split is data.tfds_test_split ("validation"), padded to full batches.
  (test,) = pipeline.eval_batches(cfg, TOKENIZER, "test", batch_size=3)
  _check_pairs({k: v[:2] for k, v in test.items()}, VALIDATION)
  np.testing.assert_array_equal(test["valid"], [1, 1, 0])
  for split in ("train", "test"):
    pipeline.validate_split(pipeline.load_split(cfg, split), TOKENIZER, cfg, split)
  # Shuffled training batches hold whole records; the variable-length "scores" feature,
  # which a batch could not stack, never reaches them.
  batch = next(pipeline.train_iterator(cfg, TOKENIZER, batch_size=4))
  assert batch["chosen_tokens"].shape == (4, 6) and batch["chosen_tokens"].dtype == np.int32
  rows = set(zip(*(_decode(batch, k) for k in ("prompt_tokens", "chosen_tokens",
                                                "rejected_tokens"))))
  assert rows == set(TRAIN)
  assert sorted(p for p, _, _ in os.walk(data_dir)) == before  # nothing prepared or written


def test_name_with_version_and_split_spec(data_dir):
  cfg = _cfg(data_dir, name=f"{NAME}:1.0.0", tfds_train_split="train[1:3]",
             tfds_test_split="train[:1]")
  assert len(pipeline.load_split(cfg, "train")) == 2
  (batch,) = pipeline.eval_batches(cfg, TOKENIZER, "train", batch_size=2)
  _check_pairs(batch, TRAIN[1:3])
  (batch,) = pipeline.eval_batches(cfg, TOKENIZER, "test", batch_size=1)
  _check_pairs(batch, TRAIN[:1])


def test_unregistered_builder_is_read_from_its_files(tmp_path):
  features = {**_text_features("prompt", "answer", "demonstration", "chosen", "rejected",
                               "completion"),
              "label": tfds.features.Scalar(np.bool_), "id": tfds.features.Scalar(np.int64)}
  rows = [{"prompt": "2+2=", "answer": "4", "demonstration": "4", "chosen": "4",
           "rejected": "22", "completion": "5", "label": False, "id": 7},
          {"prompt": "q", "answer": "", "demonstration": "", "chosen": "", "rejected": "",
           "completion": "a", "label": True, "id": 8}]
  _files_builder(tmp_path, features, {"train": rows, "test": rows[:1]})
  cfg = _cfg(tmp_path, name=FILES_NAME, tfds_test_split="test")
  with pytest.raises(tfds.core.registered.DatasetNotFoundError):
    tfds.builder_cls(FILES_NAME)  # no class: only the prepared files are read
  (batch,) = pipeline.eval_batches(cfg, TOKENIZER, "train", batch_size=2)
  for key in ("answer", "demo", "chosen", "rejected", "completion"):
    field = {"demo": "demonstration"}.get(key, key)
    assert _decode(batch, f"{key}_tokens") == [r[field] for r in rows], key
  np.testing.assert_array_equal(batch["labels"], [0, 1])
  assert not batch["chosen_mask"][1].any()  # no pair in the second record
  (batch,) = pipeline.eval_batches(cfg, TOKENIZER, "test", batch_size=1)
  assert _decode(batch, "prompt_tokens") == ["2+2="]


# --- Errors ----------------------------------------------------------------------


def test_not_prepared_names_dataset_and_dir(tmp_path, data_dir):
  empty = tmp_path / "empty"
  empty.mkdir()
  # A registered builder: its class is found, its data is not.
  message = _one_line_error(pipeline.load_split, _cfg(empty), "train")
  assert message.startswith(f"TFDS dataset {NAME!r} under data.data_dir={str(empty)!r} is"
                            " not prepared")
  assert "never downloads or prepares" in message
  # No class and no files; the error lists what data_dir holds.
  message = _one_line_error(pipeline.prepare, _cfg(data_dir, name="rlalign_no_such_prefs"))
  assert message.startswith(f"TFDS dataset 'rlalign_no_such_prefs' under data.data_dir="
                            f"{str(data_dir)!r} is not prepared (datasets there: ['{NAME}'])")
  # A version that was never prepared.
  message = _one_line_error(pipeline.prepare, _cfg(data_dir, name=f"{NAME}:9.0.0"))
  assert f"TFDS dataset '{NAME}:9.0.0'" in message and "9.0.0" in message
  assert list(empty.iterdir()) == []  # nothing was downloaded or prepared


def test_missing_split_names_the_split_field(data_dir):
  cfg = _cfg(data_dir, tfds_test_split="test")
  message = _one_line_error(pipeline.load_split, cfg, "test")
  assert message.startswith(f"split 'test' (data.tfds_test_split) of TFDS dataset {NAME!r}:")
  assert "one of ['train', 'validation']" in message
  with pytest.raises(ValueError, match="split 'test'"):
    pipeline.eval_batches(cfg, TOKENIZER, "test", batch_size=2)


_PROMPT = {"prompt": tfds.features.Text()}


@pytest.mark.parametrize("features, row, message", [
    ({"text": tfds.features.Text()}, {"text": "hi"},
     "has no \"prompt\" feature (it has ['text']); a string \"prompt\" is required"),
    ({"prompt": tfds.features.Scalar(np.int64)}, {"prompt": 1}, 'feature "prompt" must be a'
                                                                " string"),
    ({**_PROMPT, "chosen": tfds.features.Tensor(shape=(None,), dtype=np.int64),
      "rejected": tfds.features.Text()},
     {"prompt": "p", "chosen": [1, 2], "rejected": "r"}, 'feature "chosen" must be a string'),
    ({**_PROMPT, "answer": tfds.features.FeaturesDict({"text": tfds.features.Text()})},
     {"prompt": "p", "answer": {"text": "a"}}, 'feature "answer" must be a string'),
    ({**_PROMPT, "completion": tfds.features.Text(), "label": tfds.features.Scalar(np.int64)},
     {"prompt": "p", "completion": "c", "label": 1}, 'feature "label" must be a bool scalar'),
    ({**_PROMPT, "completion": tfds.features.Text()}, {"prompt": "p", "completion": "c"},
     'has a "completion" feature but no bool "label"'),
    ({**_PROMPT, "chosen": tfds.features.Text()}, {"prompt": "p", "chosen": "c"},
     'needs both "chosen" and "rejected" features, got only "chosen"'),
])
def test_bad_features_are_named(tmp_path, features, row, message):
  _files_builder(tmp_path, features, {"train": [row]})
  cfg = _cfg(tmp_path, name=FILES_NAME)
  for check in (lambda: pipeline.prepare(cfg), lambda: pipeline.load_split(cfg, "train")):
    got = _one_line_error(check)
    assert got.startswith(f"TFDS dataset {FILES_NAME!r}") and message in got, got


@pytest.mark.parametrize("chosen, rejected, message", [
    ("x" * 9, "n", '"chosen" needs 10 tokens (incl. EOS) but data.max_answer_len=6'),
    ("y", "", 'a preference pair needs both "chosen" and "rejected" (an empty string counts'
              ' as none), got only "chosen"'),
    ("same", "same", '"chosen" and "rejected" are the same (no preference): \'same\''),
    ("  ", "n", '"chosen" is only whitespace'),
])
def test_bad_records_name_split_and_record(tmp_path, chosen, rejected, message):
  rows = [{"prompt": "ok", "chosen": "a", "rejected": "b"},
          {"prompt": "bad", "chosen": chosen, "rejected": rejected}]
  _files_builder(tmp_path, _text_features("prompt", "chosen", "rejected"), {"train": rows})
  cfg = _cfg(tmp_path, name=FILES_NAME, tfds_train_split="train")
  train = pipeline.load_split(cfg, "train")
  where = f"train split, record 1 ({FILES_NAME} split 'train'): "
  for check in (lambda: pipeline.validate_split(train, TOKENIZER, cfg, "train"),
                lambda: pipeline.eval_batches(cfg, TOKENIZER, "train", batch_size=2)):
    assert _one_line_error(check).startswith(where + message)
  # During training (no index): the split and its TFDS spec.
  with pytest.raises(ValueError, match=f"^train split \\({FILES_NAME} split 'train'\\): "):
    it = pipeline.train_iterator(cfg, TOKENIZER, batch_size=2)
    next(it)
