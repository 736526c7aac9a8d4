"""TFDS builders for the prompt datasets (array_record; no TensorFlow needed).

Both builders emit the same text features, so everything downstream
is task-agnostic:
  prompt:        what the policy is asked (non-empty).
  answer:        the reference answer used by rewards ("" if none).
  demonstration: a teacher completion for imitation ("" if none).
  chosen, rejected: a preference pair of completions ("" if none; both or
                 neither).

Config names encode everything that determines the data (generator settings,
or a hash of the JSONL contents), so a changed setting or an edited file gets
its own cache directory instead of silently reusing stale records. Nothing is
ever downloaded.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
from typing import Any

import tensorflow_datasets as tfds

from rlalign.data import addition

_TEXT_KEYS = ("prompt", "answer", "demonstration", "chosen", "rejected")


def _features() -> tfds.features.FeaturesDict:
  return tfds.features.FeaturesDict({k: tfds.features.Text() for k in _TEXT_KEYS})


class _LocalBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Base for builders that live in this package and never download."""

  # TFDS's own lookup of the builder's source file needs the optional
  # `importlib_resources` package for installed (non-zip) packages; the plain
  # file path is what that lookup would return anyway.
  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> tfds.core.Path:
    return tfds.core.Path(inspect.getfile(cls))

  def _info(self) -> tfds.core.DatasetInfo:
    # Records keep generation order: addition problems are already random,
    # JSONL records follow the user's file, and eval batches stay in order.
    return tfds.core.DatasetInfo(
        builder=self, features=_features(), disable_shuffling=True
    )


# tfds.core.BuilderConfig is a mutable dataclass, so a frozen subclass is not
# allowed; the configs below are treated as immutable and built by `create`.
@dataclasses.dataclass(eq=False, kw_only=True)
class AdditionConfig(tfds.core.BuilderConfig):
  """Generator settings for `AdditionPrompts`; the name encodes all of them."""

  max_digits: int = 3
  carry_drop: float = 0.7
  num_train: int = 50_000
  num_test: int = 512
  seed: int = 0

  @classmethod
  def create(
      cls,
      *,
      max_digits: int,
      carry_drop: float,
      num_train: int,
      num_test: int,
      seed: int,
  ) -> AdditionConfig:
    carry_drop = float(carry_drop)
    # repr() of a float round-trips, so distinct values give distinct names.
    name = (
        f"d{max_digits}-drop{carry_drop!r}-train{num_train}"
        f"-test{num_test}-seed{seed}"
    )
    return cls(
        name=name,
        max_digits=max_digits,
        carry_drop=carry_drop,
        num_train=num_train,
        num_test=num_test,
        seed=seed,
    )


class AdditionPrompts(_LocalBuilder):
  """Reversed-digit addition problems (see `rlalign.data.addition`).

  Needs `config=AdditionConfig.create(...)`; there is no default config
  (TFDS would reject a custom config that reuses a predefined name).
  """

  name = "rlalign_addition"
  VERSION = tfds.core.Version("1.3.0")
  RELEASE_NOTES = {
      "1.0.0": "Initial release.",
      "1.1.0": "Operands uniform over values, not digit counts.",
      "1.2.0": "Operands zero-padded to max_digits.",
      "1.3.0": "Empty chosen/rejected features.",
  }

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    c = self.builder_config
    return {
        split: self._generate_examples(split, num)
        for split, num in (("train", c.num_train), ("test", c.num_test))
    }

  def _generate_examples(self, split: str, num: int):
    c = self.builder_config
    problems = addition.generate_problems(
        split, num, c.max_digits, c.carry_drop, c.seed
    )
    for index, problem in enumerate(problems):
      yield index, {**dict.fromkeys(_TEXT_KEYS, ""), **problem}


def _parse_jsonl_line(path: str, lineno: int, line: str) -> dict[str, str]:
  where = f"{path}:{lineno}"
  try:
    record = json.loads(line)
  except json.JSONDecodeError as e:
    raise ValueError(
        f"{where}: invalid JSON ({e.msg}); expected one JSON object per line"
    ) from None
  if not isinstance(record, dict):
    raise ValueError(
        f"{where}: expected a JSON object like {{\"prompt\": \"...\"}}, got"
        f" {type(record).__name__}"
    )
  if "prompt" not in record:
    raise ValueError(f"{where}: missing required key \"prompt\"")
  example = {}
  for key in _TEXT_KEYS:
    value = record.get(key, "")
    if not isinstance(value, str):
      raise ValueError(
          f"{where}: \"{key}\" must be a string, got {type(value).__name__}"
      )
    example[key] = value
  if not example["prompt"]:
    raise ValueError(f"{where}: \"prompt\" must be a non-empty string")
  if bool(example["chosen"]) != bool(example["rejected"]):
    raise ValueError(
        f"{where}: a preference pair needs both \"chosen\" and \"rejected\""
    )
  return example


def read_jsonl(path: str, data: bytes | None = None) -> list[dict[str, str]]:
  """Parses and validates a prompts JSONL file (see `JsonlPrompts`).

  Args:
    path: the file; named in every error, with the line number.
    data: the file's bytes if already read (avoids reading it twice).

  Returns:
    One dict of every text key per non-blank line.
  """
  if data is None:
    data = _read_bytes(path)
  try:
    text = data.decode("utf-8")
  except UnicodeDecodeError as e:
    raise ValueError(f"{path}: not valid UTF-8 ({e})") from None
  examples = []
  # Split on "\n" only: JSON strings may legally hold other line separators.
  for lineno, line in enumerate(text.split("\n"), start=1):
    if line.strip():
      examples.append(_parse_jsonl_line(path, lineno, line))
  if not examples:
    raise ValueError(
        f"{path}: no examples; expected one JSON object per line with a"
        " \"prompt\" key"
    )
  return examples


def _read_bytes(path: str) -> bytes:
  try:
    with open(path, "rb") as f:
      return f.read()
  except FileNotFoundError:
    raise FileNotFoundError(
        f"{path}: prompts file not found (expected a JSONL file)"
    ) from None


def _load_jsonl_splits(
    train_path: str, test_path: str
) -> tuple[dict[str, list[dict[str, str]]], str]:
  """Reads and validates the files; returns the splits and a content digest."""
  digest = hashlib.sha256()
  splits = {}
  for split, path in (("train", train_path), ("test", test_path)):
    if not path:
      continue
    data = _read_bytes(path)
    splits[split] = read_jsonl(path, data)
    # Split name and byte count delimit each file, so moving lines between
    # train and test changes the digest.
    digest.update(f"{split}:{len(data)}:".encode())
    digest.update(data)
  return splits, digest.hexdigest()


@dataclasses.dataclass(eq=False, kw_only=True)
class JsonlConfig(tfds.core.BuilderConfig):
  """JSONL files for `JsonlPrompts`; the name hashes their contents."""

  train_path: str = ""
  test_path: str = ""

  @classmethod
  def create(cls, train_path: str, test_path: str = "") -> JsonlConfig:
    """Validates the files now, before TFDS creates any output directory."""
    if not train_path:
      raise ValueError("JsonlConfig needs a train_path")
    _, digest = _load_jsonl_splits(train_path, test_path)
    return cls(
        name=f"jsonl-{digest[:12]}", train_path=train_path, test_path=test_path
    )


class JsonlPrompts(_LocalBuilder):
  """User prompts from JSONL files.

  Each non-blank line is a JSON object with a required non-empty string
  "prompt" and optional strings "answer", "demonstration", and the preference
  pair "chosen" / "rejected" (default "", and both or neither).
  Other keys are ignored. The test split exists only if `test_path` is set.
  Needs `config=JsonlConfig.create(train_path, test_path)`.
  """

  name = "rlalign_jsonl_prompts"
  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {
      "1.0.0": "Initial release.",
      "1.1.0": "Preference pairs: chosen and rejected.",
  }

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    c = self.builder_config
    splits, digest = _load_jsonl_splits(c.train_path, c.test_path)
    if c.name != f"jsonl-{digest[:12]}":
      raise ValueError(
          f"{c.train_path} / {c.test_path or '-'} changed after config"
          f" {c.name!r} was created; create the config again"
      )
    return {
        split: self._generate_examples(examples)
        for split, examples in splits.items()
    }

  def _generate_examples(self, examples: list[dict[str, Any]]):
    yield from enumerate(examples)
