"""TFDS builders for the prompt datasets (array_record; no TensorFlow needed).

Both builders emit these features, so everything downstream is
task-agnostic:
  prompt:        what the policy is asked (non-empty).
  answer:        the reference answer used by rewards ("" if none).
  demonstration: a teacher completion for imitation ("" if none).
  chosen, rejected: a preference pair of completions ("" if none; both or
                 neither).
  completion, label: one unpaired completion and whether it is good (for
                 KTO and pointwise verifiers; "" and False if none).
  step_labels:   float32 [steps], one label in [0, 1] per step of the
                 completion (for process reward models; empty if none).
JSONL records also keep `line`, their 1-based line in the source file, so
errors found later (a completion too long to encode) can name `path:line`.

Config names encode everything that determines the data (generator settings,
or a hash of the JSONL contents), so a changed setting or an edited file gets
its own cache directory instead of silently reusing stale records. Nothing is
ever downloaded.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import itertools
import json
import re
from typing import Any, Mapping

import numpy as np
import tensorflow_datasets as tfds

from rlalign.data import addition, rubric

_TEXT_KEYS = ("prompt", "answer", "demonstration", "chosen", "rejected", "completion")
_RESPONSE_KEYS = ("chosen", "rejected", "completion")  # completions; never only whitespace
_MAX_NESTING = 32  # deepest JSON nesting a line may have; records are flat anyway
_SHORT = 60  # characters of a value that an error message echoes
_NO_STEPS = np.zeros((0,), np.float32)


def _features(*, with_line: bool) -> tfds.features.FeaturesDict:
  features = {k: tfds.features.Text() for k in _TEXT_KEYS}
  features["label"] = tfds.features.Scalar(np.bool_)
  features["step_labels"] = tfds.features.Tensor(shape=(None,), dtype=np.float32)
  if with_line:
    features["line"] = tfds.features.Scalar(np.int64)
  return tfds.features.FeaturesDict(features)


def shorten(text: str, limit: int = _SHORT) -> str:
  """`text` for an error message: its repr (one line), cut to `limit` characters."""
  if len(text) <= limit:
    return repr(text)
  return f"{text[:limit]!r}... ({len(text)} characters)"


class _LocalBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Base for builders that live in this package and never download."""

  # TFDS's own lookup of the builder's source file needs the optional
  # `importlib_resources` package for installed (non-zip) packages; the plain
  # file path is what that lookup would return anyway.
  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> tfds.core.Path:
    return tfds.core.Path(inspect.getfile(cls))

  _WITH_LINE = False  # whether records carry their source `line`

  def _info(self) -> tfds.core.DatasetInfo:
    # Records keep generation order: addition problems are already random,
    # JSONL records follow the user's file, and eval batches stay in order.
    return tfds.core.DatasetInfo(
        builder=self,
        features=_features(with_line=self._WITH_LINE),
        disable_shuffling=True,
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
  hidden_fraction: float = 0.0

  @classmethod
  def create(
      cls,
      *,
      max_digits: int,
      carry_drop: float,
      num_train: int,
      num_test: int,
      seed: int,
      hidden_fraction: float = 0.0,
  ) -> AdditionConfig:
    carry_drop, hidden_fraction = float(carry_drop), float(hidden_fraction)
    # repr() of a float round-trips, so distinct values give distinct names; a task
    # without hidden digits keeps the name it always had.
    name = (
        f"d{max_digits}-drop{carry_drop!r}-train{num_train}"
        f"-test{num_test}-seed{seed}"
        + (f"-hidden{hidden_fraction!r}" if hidden_fraction else "")
    )
    return cls(
        name=name,
        max_digits=max_digits,
        carry_drop=carry_drop,
        num_train=num_train,
        num_test=num_test,
        seed=seed,
        hidden_fraction=hidden_fraction,
    )


class AdditionPrompts(_LocalBuilder):
  """Reversed-digit addition problems (see `rlalign.data.addition`).

  Needs `config=AdditionConfig.create(...)`; there is no default config
  (TFDS would reject a custom config that reuses a predefined name).
  """

  name = "rlalign_addition"
  VERSION = tfds.core.Version("1.5.0")
  RELEASE_NOTES = {
      "1.0.0": "Initial release.",
      "1.1.0": "Operands uniform over values, not digit counts.",
      "1.2.0": "Operands zero-padded to max_digits.",
      "1.3.0": "Empty chosen/rejected features.",
      "1.4.0": "Empty completion/label features.",
      "1.5.0": "Empty step_labels feature.",
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
        split, num, c.max_digits, c.carry_drop, c.seed, c.hidden_fraction
    )
    for index, problem in enumerate(problems):
      yield index, {**dict.fromkeys(_TEXT_KEYS, ""), "label": False,
                    "step_labels": _NO_STEPS, **problem}


@dataclasses.dataclass(eq=False, kw_only=True)
class EasyHardConfig(tfds.core.BuilderConfig):
  """Generator settings for `EasyHardAddition`; the name encodes all of them."""

  easy_digits: int = 3
  hard_digits: int = 4
  hard_fraction: float = 0.5
  carry_drop: float = 0.7
  num_train: int = 50_000
  num_test: int = 512
  seed: int = 0

  @classmethod
  def create(cls, *, easy_digits: int, hard_digits: int, hard_fraction: float,
             carry_drop: float, num_train: int, num_test: int, seed: int) -> EasyHardConfig:
    hard_fraction, carry_drop = float(hard_fraction), float(carry_drop)
    name = (f"e{easy_digits}-h{hard_digits}-hard{hard_fraction!r}-drop{carry_drop!r}"
            f"-train{num_train}-test{num_test}-seed{seed}")
    return cls(name=name, easy_digits=easy_digits, hard_digits=hard_digits,
               hard_fraction=hard_fraction, carry_drop=carry_drop, num_train=num_train,
               num_test=num_test, seed=seed)


class EasyHardAddition(_LocalBuilder):
  """Addition whose hard problems come without labels (`addition.generate_easy_hard`): train
  (easy with answers, hard prompts alone), test (easy) and test_hard (hard, gold answers)."""

  name = "rlalign_addition_easy_hard"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    c = self.builder_config
    return {split: self._generate_examples(split, c.num_train if split == "train" else
                                           c.num_test)
            for split in addition.EASY_HARD_SPLITS}

  def _generate_examples(self, split: str, num: int):
    c = self.builder_config
    problems = addition.generate_easy_hard(split, num, c.easy_digits, c.hard_digits,
                                           c.hard_fraction, c.carry_drop, c.seed)
    for index, problem in enumerate(problems):
      yield index, {**dict.fromkeys(_TEXT_KEYS, ""), "label": False,
                    "step_labels": _NO_STEPS, **problem}


@dataclasses.dataclass(eq=False, kw_only=True)
class RubricConfig(tfds.core.BuilderConfig):
  """Generator settings for `RubricPrompts`; the name encodes all of them."""

  honor: float = 0.4
  num_train: int = 50_000
  num_test: int = 256
  seed: int = 0

  @classmethod
  def create(cls, *, honor: float, num_train: int, num_test: int, seed: int) -> RubricConfig:
    honor = float(honor)
    return cls(name=f"honor{honor!r}-train{num_train}-test{num_test}-seed{seed}", honor=honor,
               num_train=num_train, num_test=num_test, seed=seed)


class RubricPrompts(_LocalBuilder):
  """Digit strings under four constraints, graded by a five-point rubric
  (`rlalign.data.rubric`): the answer is the gold judge's key, the demonstration a sloppy
  teacher's."""

  name = "rlalign_rubric"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    c = self.builder_config
    return {split: self._generate_examples(split, num)
            for split, num in (("train", c.num_train), ("test", c.num_test))}

  def _generate_examples(self, split: str, num: int):
    c = self.builder_config
    for index, problem in enumerate(rubric.generate(split, num, c.honor, c.seed)):
      yield index, {**dict.fromkeys(_TEXT_KEYS, ""), "label": False,
                    "step_labels": _NO_STEPS, **problem}


class _DuplicateKey(Exception):
  pass


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
  """`object_pairs_hook` for json.loads: a key given twice is an error, not "last wins"."""
  seen = set()
  for key, _ in pairs:
    if key in seen:
      raise _DuplicateKey(key)
    seen.add(key)
  return dict(pairs)


# A JSON string literal (unrolled, so long strings never backtrack).
_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')


def _nesting(line: str) -> int:
  """How deep the brackets of a JSON line nest, found without recursion."""
  if line.count("[") + line.count("{") <= _MAX_NESTING:
    return 0  # cannot be too deep; skips the scan for ordinary lines
  brackets = re.sub(r"[^\[\]{}]", "", _JSON_STRING.sub("", line))
  steps = (1 if c in "[{" else -1 for c in brackets)
  return max(itertools.accumulate(steps), default=0)


def _parse_jsonl_line(path: str, lineno: int, line: str) -> dict[str, Any]:
  where = f"{path}:{lineno}"
  # json.loads recurses once per nesting level: refuse deep lines before parsing.
  depth = _nesting(line)
  if depth > _MAX_NESTING:
    raise ValueError(
        f"{where}: JSON nested {depth} levels deep (at most {_MAX_NESTING});"
        " record values are strings, and \"label\" a bool"
    )
  try:
    record = json.loads(line, object_pairs_hook=_reject_duplicates)
  except json.JSONDecodeError as e:
    raise ValueError(
        f"{where}: invalid JSON ({e.msg}); expected one JSON object per line"
    ) from None
  except _DuplicateKey as e:
    raise ValueError(
        f"{where}: duplicate key {shorten(e.args[0])}; each key may appear once"
    ) from None
  except RecursionError:
    raise ValueError(f"{where}: JSON nested too deep") from None
  if not isinstance(record, dict):
    raise ValueError(
        f"{where}: expected a JSON object like {{\"prompt\": \"...\"}}, got"
        f" {type(record).__name__}"
    )
  example = check_record(where, record)
  example["line"] = lineno
  return example


def check_record(where: str, record: Mapping[str, Any]) -> dict[str, Any]:
  """A prompt record checked against the rules every source shares (a JSONL line, a Hugging
  Face dataset's row): see `JsonlPrompts`. Errors start with `where`.

  Returns every text key ("" if absent), "label" (False if absent, or whether every step is
  good when only "step_labels" is given) and "step_labels" (a list, [] if absent).
  """
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
  label = record.get("label")
  if "label" in record and not isinstance(label, bool):
    raise ValueError(
        f"{where}: \"label\" must be true or false, got {type(label).__name__}"
    )
  for key in _RESPONSE_KEYS:
    if example[key] and not example[key].strip():
      raise ValueError(
          f"{where}: \"{key}\" is only whitespace: {shorten(example[key])}"
      )
  _check_both(where, "a preference pair", "chosen", bool(example["chosen"]),
              "rejected", bool(example["rejected"]))
  steps = _step_labels(where, record)
  _check_both(where, "an unpaired example", "completion", bool(example["completion"]),
              "label", "label" in record or steps is not None)
  if steps is not None and "label" not in record:
    label = bool(np.all(steps > 0.5))  # a solution is right when every step is
  if example["chosen"] and example["chosen"] == example["rejected"]:
    raise ValueError(
        f"{where}: \"chosen\" and \"rejected\" are the same (no preference):"
        f" {shorten(example['chosen'])}"
    )
  example["label"] = bool(label)
  example["step_labels"] = [] if steps is None else steps.tolist()
  return example


def _step_labels(where: str, record: dict[str, Any]) -> np.ndarray | None:
  """A record's "step_labels": a non-empty list of numbers in [0, 1] (or bools), one per
  step of its completion; how the completion splits into steps is the pipeline's
  `data.step_delimiter`, checked when the record is encoded."""
  if "step_labels" not in record:
    return None
  value = record["step_labels"]
  if not isinstance(value, list) or not value:
    raise ValueError(
        f"{where}: \"step_labels\" must be a non-empty list with one label per step,"
        f" got {shorten(json.dumps(value))}"
    )
  for i, x in enumerate(value):
    if (not isinstance(x, (bool, int, float)) or isinstance(x, float) and x != x
        or not 0 <= x <= 1):
      raise ValueError(
          f"{where}: \"step_labels\"[{i}] must be a number in [0, 1] (or true/false),"
          f" got {shorten(json.dumps(x))}"
      )
  return np.asarray(value, np.float32)


def _check_both(where: str, what: str, a: str, has_a: bool, b: str, has_b: bool) -> None:
  if has_a != has_b:
    given = a if has_a else b
    raise ValueError(
        f"{where}: {what} needs both \"{a}\" and \"{b}\" (an empty string counts"
        f" as none), got only \"{given}\""
    )


def read_jsonl(path: str, data: bytes | None = None) -> list[dict[str, Any]]:
  """Parses and validates a prompts JSONL file (see `JsonlPrompts`).

  Args:
    path: the file; named in every error, with the line number.
    data: the file's bytes if already read (avoids reading it twice).

  Returns:
    One dict per non-blank line: every text key, "label" (False if none),
    "step_labels" (a list of floats, [] if none) and "line" (the 1-based
    line number).
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
) -> tuple[dict[str, list[dict[str, Any]]], str]:
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
  "prompt" and optional strings "answer", "demonstration", the preference
  pair "chosen" / "rejected" (default "", both or neither, and different),
  and an unpaired labelled completion: "completion" with "label" true or
  false (both or neither). "step_labels", a list of one label in [0, 1] per
  step of "completion", trains process reward models; with it, "label" may
  be left out (it is then whether every step is good). Completions are
  never only whitespace, and no key
  may appear twice. Other keys are ignored. Each record keeps its line number.
  The test split exists only if `test_path` is set.
  Needs `config=JsonlConfig.create(train_path, test_path)`.
  """

  name = "rlalign_jsonl_prompts"
  VERSION = tfds.core.Version("1.3.0")
  RELEASE_NOTES = {
      "1.0.0": "Initial release.",
      "1.1.0": "Preference pairs: chosen and rejected.",
      "1.2.0": "Source line numbers (line); unpaired completion and label.",
      "1.3.0": "Per-step labels of the completion (step_labels).",
  }
  _WITH_LINE = True

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
    for index, example in enumerate(examples):
      yield index, {**example,
                    "step_labels": np.asarray(example["step_labels"], np.float32)}
