"""From a `DataConfig` to fixed-shape numpy batches.

  prepare(cfg)        builds (or reuses) the TFDS dataset under cfg.data_dir; for
                      task "tfds", only checks the user's prepared dataset; for task
                      "hf", opens the Hugging Face dataset and checks its columns.
  load_split(...)     random-access source of one split (array_record, or the rows
                      of a Hugging Face dataset as checked records).
  validate_split(...) encodes every record up front, so a bad prompt fails
                      before any compilation, naming its file:line (JSONL), its
                      split and row (Hugging Face) or its split and index.
  train_iterator(...) infinite, sharded, shuffled grain iterator whose state
                      is JSON and resumes exactly (for checkpointing).
  eval_batches(...)   the whole split once, in order, padded to full batches.

Every batch field has a static shape, so jitted steps never recompile:
prompts are LEFT-padded `[PAD.., BOS, p1..pn]` (generation continues from the
last column); answers, demonstrations, the chosen/rejected completions of a
preference pair and the unpaired `completion` RIGHT-padded `[a1..am, EOS, PAD..]`
to `max_answer_len`. `labels` [] float32 is the unpaired completion's label
(1 good, 0 bad; 0 with an all-false `completion_mask` where there is none), so
batches feed the "scored" offline kind (`rlalign.rl.offline.to_sequences`).
`step_labels` [max_answer_len] float32 holds a record's per-step labels at the
token that ends each step of its completion (each `data.step_delimiter`, and
the EOS), -1 elsewhere: the positions a process reward model scores.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Iterator, Mapping, Sequence, Tuple

import grain
import numpy as np
import tensorflow_datasets as tfds

from rlalign.data import buckets, builders, hf_datasets, rubric
from rlalign.data.tokenizer import CharTokenizer

TASKS = ("addition", "rubric", "jsonl", "tfds", "hf")
_MAX_SEED = 2**32  # grain shuffle seeds must fit in 32 bits.


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """Where prompts come from and how long they may be; `validate()` names any bad field.

  Tasks: "addition" generates its own TFDS dataset; "jsonl" converts `train_path` /
  `test_path` to one (see `rlalign.data.builders`); "tfds" reads a TFDS dataset the user
  already prepared under `data_dir` with file_format="array_record", found by its TFDS name
  `tfds_name` ("my_prefs", "my_prefs/config:1.0.0"; a name, not a path) and never
  downloaded or prepared here. Its features need a string `prompt`; the string features
  `answer`, `demonstration`, `chosen`, `rejected`, `completion` and the bool `label` are
  optional (empty / false when absent, as in JSONL) and other features are ignored. Its
  `tfds_train_split` / `tfds_test_split` (any TFDS split spec, e.g. "train[:95%]") are the
  pipeline's "train" / "test" splits. "hf" reads a local copy of a Hugging Face dataset,
  `hf_path` (a save_to_disk directory, or parquet / arrow / JSONL files), its columns mapped
  to the same fields by `columns`, conversations rendered by the chat template; see
  `rlalign.data.hf_datasets`.
  """

  task: str = "addition"          # "addition" | "rubric" | "jsonl" | "tfds" | "hf"
  data_dir: str = ""              # TFDS data dir; must be set (non-empty) by the caller
  max_prompt_len: int = 12        # tokens incl. BOS
  max_answer_len: int = 6         # tokens incl. EOS
  seed: int = 0
  max_digits: int = 3             # addition only
  carry_drop: float = 0.7         # addition only
  num_train: int = 50_000         # addition only
  num_test: int = 512             # addition only
  # addition only: > max_digits makes it an easy-to-hard task (`addition.generate_easy_hard`):
  # operands of up to max_digits digits are easy and labelled, longer ones (up to hard_digits)
  # hard, a fraction hard_fraction of the train split, with no answer there; their gold
  # answers are only in the held-out split "test_hard".
  hard_digits: int = 0
  hard_fraction: float = 0.5
  # addition only: the share of problems whose second operand's units digit is shown as "?"
  # (`addition.hide_units_digit`; needs alphabet "ascii"): a first answer is a guess.
  hidden_fraction: float = 0.0
  # rubric only (`rlalign.data.rubric`, the self-rewarding task): how often the teacher's
  # demonstration meets each constraint; num_train and num_test size it as addition's.
  honor: float = 0.4
  # The character tokenizer's alphabet: "" the task's own (addition: digits, "+" and "="),
  # "ascii" printable ASCII and newline, for text beside the task's (a recipe's feedback).
  alphabet: str = ""
  train_path: str = ""            # jsonl only
  test_path: str = ""             # jsonl only
  # tfds only: the prepared dataset's TFDS name (under data_dir), and its splits (any TFDS
  # split spec) read as the pipeline's train and test splits.
  tfds_name: str = ""
  tfds_train_split: str = "train"
  tfds_test_split: str = "test"
  # hf only: a local copy of a Hugging Face dataset (a save_to_disk directory, or parquet /
  # arrow / JSONL files; never a hub name), the splits read as the pipeline's train and test
  # ("train", "train[:95%]", "train[100:]"), and {field: column} for columns not named like
  # the field ("" leaves a same-named column unread); see rlalign.data.hf_datasets.
  hf_path: str = ""
  hf_train_split: str = "train"
  hf_test_split: str = "test"
  columns: Tuple[Tuple[str, str], ...] = ()
  tokenizer_dir: str = ""         # a Hugging Face tokenizer directory; "" = character tokenizer
  prompt_format: str = "raw"      # "raw" text, or "chat": one user turn through the chat template
  system_prompt: str = ""         # chat only: a system turn before the user's
  # RL prompts are cut to the smallest of these lengths that holds a batch's longest prompt
  # (one compilation per bucket); () keeps every batch at max_prompt_len.
  prompt_buckets: Tuple[int, ...] = ()
  # The text that ends a step of a completion with "step_labels" (one token); a completion's
  # last step ends at its EOS. Match the process reward's ``delimiter``.
  step_delimiter: str = "\n"
  # Held-out splits evaluated beside "test", logged as eval/<split>/<metric>_<mode>
  # (an easy-to-hard task's "test_hard").
  eval_splits: Tuple[str, ...] = ()

  def validate(self) -> None:
    """Raises ValueError naming the first bad field."""
    if self.task not in TASKS:
      raise ValueError(f"data.task must be one of {TASKS}, got {self.task!r}")
    if not self.data_dir:
      raise ValueError("data.data_dir must be set (the TFDS data directory)")
    if self.max_prompt_len < 2:
      raise ValueError(
          "data.max_prompt_len must be >= 2 (BOS plus one token), got"
          f" {self.max_prompt_len}"
      )
    if self.max_answer_len < 1:
      raise ValueError(
          f"data.max_answer_len must be positive, got {self.max_answer_len}"
      )
    if not 0 <= self.seed < _MAX_SEED:
      raise ValueError(f"data.seed must be in [0, 2**32), got {self.seed}")
    if self.prompt_format not in ("raw", "chat"):
      raise ValueError(
          f"data.prompt_format must be 'raw' or 'chat', got {self.prompt_format!r}"
      )
    if self.prompt_format == "chat" and not self.tokenizer_dir:
      raise ValueError(
          "data.prompt_format='chat' needs data.tokenizer_dir (a tokenizer with a"
          " chat template)"
      )
    if self.alphabet not in ("", "ascii"):
      raise ValueError(f"data.alphabet must be '' (the task's) or 'ascii', got {self.alphabet!r}")
    if self.alphabet and self.tokenizer_dir:
      raise ValueError("data.alphabet picks a character tokenizer; data.tokenizer_dir gives a "
                       "Hugging Face one: set one of them")
    buckets.validate(self.prompt_buckets, self.max_prompt_len)
    for split in self.eval_splits:
      if split in ("train", "test") or not split or "/" in split:
        raise ValueError(f"data.eval_splits: {split!r} is not an extra held-out split (train "
                         "and test are read anyway; a name has no '/')")
    if len(set(self.eval_splits)) != len(self.eval_splits):
      raise ValueError(f"data.eval_splits repeats a split: {self.eval_splits}")
    if not self.step_delimiter:
      raise ValueError("data.step_delimiter must be the (one-token) text that ends a step")
    if self.task == "addition":
      self._validate_addition()
    elif self.task == "rubric":
      self._validate_rubric()
    elif self.task == "tfds":
      self._validate_tfds()
    elif self.task == "hf":
      hf_datasets.validate_config(self)
    elif not self.train_path:
      raise ValueError("data.train_path is required when data.task='jsonl'")

  def _validate_tfds(self) -> None:
    if not self.tfds_name:
      raise ValueError(
          "data.tfds_name is required when data.task='tfds' (a TFDS name like"
          " 'my_prefs' or 'my_prefs/config:1.0.0', prepared under data.data_dir)"
      )
    _parse_tfds_name(self.tfds_name)
    for name in ("tfds_train_split", "tfds_test_split"):
      if not getattr(self, name):
        raise ValueError(f"data.{name} must name a split of data.tfds_name")

  def _validate_rubric(self) -> None:
    if not 0.0 <= self.honor <= 1.0:
      raise ValueError(f"data.honor must be in [0, 1], got {self.honor}")
    for name in ("num_train", "num_test"):
      if getattr(self, name) < 1:
        raise ValueError(f"data.{name} must be positive, got {getattr(self, name)}")
    if self.eval_splits:
      raise ValueError(f"data.eval_splits names {list(self.eval_splits)}; the rubric task has "
                       "no extra held-out splits")
    if not self.tokenizer_dir:  # a chat template's text comes before the prompt
      if self.max_prompt_len < rubric.PROMPT_LEN + 1:
        raise ValueError(f"data.max_prompt_len={self.max_prompt_len} is too small for the "
                         f"rubric task: prompts need {rubric.PROMPT_LEN + 1} tokens with BOS")
      if self.max_answer_len < rubric.MAX_RESPONSE + 1:
        raise ValueError(f"data.max_answer_len={self.max_answer_len} is too small for the "
                         f"rubric task: the teacher's answers need {rubric.MAX_RESPONSE + 1} "
                         "tokens with EOS")

  def _validate_addition(self) -> None:
    if self.max_digits < 1:
      raise ValueError(f"data.max_digits must be >= 1, got {self.max_digits}")
    if not 0.0 <= self.carry_drop <= 1.0:
      raise ValueError(
          f"data.carry_drop must be in [0, 1], got {self.carry_drop}"
      )
    for name in ("num_train", "num_test"):
      if getattr(self, name) < 1:
        raise ValueError(f"data.{name} must be positive, got {getattr(self, name)}")
    if self.hard_digits < 0:
      raise ValueError(f"data.hard_digits must be >= 0, got {self.hard_digits}")
    if self.hard_digits and self.hard_digits <= self.max_digits:
      raise ValueError(f"data.hard_digits ({self.hard_digits}) must exceed data.max_digits "
                       f"({self.max_digits}), or be 0 for no hard problems")
    have = ("test_hard",) if self.hard_digits else ()
    unknown = [split for split in self.eval_splits if split not in have]
    if unknown:
      raise ValueError(f"data.eval_splits names {unknown}, which the addition task does not "
                       f"have (its extra held-out splits: {list(have)}; test_hard needs "
                       "data.hard_digits)")
    if not 0.0 <= self.hard_fraction <= 1.0:
      raise ValueError(f"data.hard_fraction must be in [0, 1], got {self.hard_fraction}")
    if not 0.0 <= self.hidden_fraction <= 1.0:
      raise ValueError(f"data.hidden_fraction must be in [0, 1], got {self.hidden_fraction}")
    if self.hidden_fraction and self.hard_digits:
      raise ValueError("data.hidden_fraction and data.hard_digits are two different addition "
                       "tasks; set one")
    if self.hidden_fraction and self.alphabet != "ascii" and not self.tokenizer_dir:
      raise ValueError("data.hidden_fraction writes '?' in prompts, which the addition "
                       "alphabet lacks: set data.alphabet='ascii'")
    # Catch too-short lengths here rather than after building the dataset.
    width = max(self.max_digits, self.hard_digits)
    widest = f"data.{'hard_digits' if self.hard_digits else 'max_digits'}={width}"
    prompt_need = 2 * width + 3  # BOS, a, "+", b, "="
    answer_need = width + 2  # one extra carry digit, EOS
    if self.max_prompt_len < prompt_need:
      raise ValueError(
          f"data.max_prompt_len={self.max_prompt_len} is too small for"
          f" {widest}: prompts need up to"
          f" {prompt_need} tokens"
      )
    if self.max_answer_len < answer_need:
      raise ValueError(
          f"data.max_answer_len={self.max_answer_len} is too small for"
          f" {widest}: answers need up to"
          f" {answer_need} tokens"
      )


def _make_builder(cfg: DataConfig) -> tfds.core.DatasetBuilder:
  if cfg.task == "addition" and cfg.hard_digits:
    builder_cls = builders.EasyHardAddition
    config = builders.EasyHardConfig.create(
        easy_digits=cfg.max_digits, hard_digits=cfg.hard_digits,
        hard_fraction=cfg.hard_fraction, carry_drop=cfg.carry_drop,
        num_train=cfg.num_train, num_test=cfg.num_test, seed=cfg.seed)
  elif cfg.task == "rubric":
    builder_cls = builders.RubricPrompts
    config = builders.RubricConfig.create(honor=cfg.honor, num_train=cfg.num_train,
                                          num_test=cfg.num_test, seed=cfg.seed)
  elif cfg.task == "addition":
    builder_cls = builders.AdditionPrompts
    config = builders.AdditionConfig.create(
        max_digits=cfg.max_digits,
        carry_drop=cfg.carry_drop,
        num_train=cfg.num_train,
        num_test=cfg.num_test,
        seed=cfg.seed,
        hidden_fraction=cfg.hidden_fraction,
    )
  else:
    builder_cls = builders.JsonlPrompts
    config = builders.JsonlConfig.create(cfg.train_path, cfg.test_path)
  return builder_cls(
      config=config, data_dir=cfg.data_dir, file_format="array_record"
  )


def _parse_tfds_name(name: str):
  """`data.tfds_name` as TFDS parses it; local names only (no namespace, which fetches)."""
  try:
    dataset, _ = tfds.core.naming.parse_builder_name_kwargs(name)
  except ValueError:
    raise ValueError(
        f"data.tfds_name={name!r} is not a TFDS name; expected"
        " dataset[/config][:version] (a name under data.data_dir, not a path)"
    ) from None
  if dataset.namespace:
    raise ValueError(
        f"data.tfds_name={name!r} has a namespace ({dataset.namespace!r}:); only datasets"
        " prepared under data.data_dir are read"
    )
  return dataset


def _prepared_names(data_dir: str) -> list[str]:
  """The dataset directories under `data_dir` (for an error message)."""
  try:
    return sorted(e.name for e in os.scandir(data_dir) if e.is_dir() and e.name != "downloads")
  except OSError:
    return []


def _first_line(e: Exception) -> str:
  lines = str(e).strip().splitlines()
  return lines[0] if lines else type(e).__name__


def _tfds_builder(cfg: DataConfig) -> tfds.core.DatasetBuilder:
  """The user's prepared dataset, checked; never downloads or prepares anything.

  `tfds.builder` uses the builder's class if it is imported (registered), else reads the
  prepared files alone (`features.json`, `dataset_info.json`), so the class is optional.
  """
  name, data_dir = cfg.tfds_name, cfg.data_dir
  where = f"TFDS dataset {name!r} under data.data_dir={data_dir!r}"
  hint = (
      "prepare it there first (download_and_prepare with file_format='array_record');"
      " rlalign never downloads or prepares data.task='tfds' datasets"
  )
  try:
    # try_gcs=False (the default): data_dir is the only place looked at.
    builder = tfds.builder(name, data_dir=data_dir, try_gcs=False)
  except tfds.core.registered.DatasetNotFoundError:
    raise ValueError(
        f"{where} is not prepared (datasets there: {_prepared_names(data_dir)}); {hint}"
    ) from None
  except (ValueError, AssertionError) as e:  # e.g. a version the class does not have
    raise ValueError(f"{where} cannot be loaded: {_first_line(e)}") from None
  if not builder.is_prepared():
    raise ValueError(f"{where} is not prepared (nothing at {builder.data_path}); {hint}")
  formats = builder.info.available_file_formats()
  if tfds.core.file_adapters.FileFormat.ARRAY_RECORD not in formats:
    raise ValueError(
        f"{where} is stored as {sorted(f.value for f in formats)}, not array_record;"
        " prepare it again with file_format='array_record'"
    )
  _tfds_fields(builder.info.features, name)  # checks the feature types
  return builder


def _scalar(feature, dtypes) -> bool:
  return (isinstance(feature, tfds.features.Tensor) and tuple(feature.shape) == ()
          and feature.np_dtype in dtypes)


def _tfds_fields(features, name: str) -> tuple[str, ...]:
  """The features the pipeline reads (see `encode_example`), their types checked."""
  if not isinstance(features, tfds.features.FeaturesDict):
    raise ValueError(
        f"TFDS dataset {name!r} has features {type(features).__name__}; expected a"
        " FeaturesDict with a string \"prompt\""
    )
  if "prompt" not in features:
    raise ValueError(
        f"TFDS dataset {name!r} has no \"prompt\" feature (it has"
        f" {sorted(features.keys())}); a string \"prompt\" is required"
    )
  fields = []
  for key in builders._TEXT_KEYS + ("label",):
    if key not in features:
      continue
    feature = features[key]
    want, dtypes = ("a bool scalar", (np.bool_,)) if key == "label" else (
        "a string (tfds.features.Text)", (np.object_, np.str_, np.bytes_))
    if not _scalar(feature, dtypes):
      got = " ".join(repr(feature).split())  # one line, even for a nested FeaturesDict
      raise ValueError(f"TFDS dataset {name!r}: feature \"{key}\" must be {want}, got {got}")
    fields.append(key)
  if ("chosen" in fields) != ("rejected" in fields):
    given = "chosen" if "chosen" in fields else "rejected"
    raise ValueError(
        f"TFDS dataset {name!r}: a preference pair needs both \"chosen\" and"
        f" \"rejected\" features, got only \"{given}\""
    )
  if "step_labels" in features:
    feature = features["step_labels"]
    if not (isinstance(feature, tfds.features.Tensor) and len(feature.shape) == 1
            and feature.np_dtype in (np.float32, np.float64)):
      got = " ".join(repr(feature).split())
      raise ValueError(f"TFDS dataset {name!r}: feature \"step_labels\" must be a float "
                       f"vector (one label per step), got {got}")
    if "completion" not in fields:
      raise ValueError(f"TFDS dataset {name!r} has \"step_labels\" but no \"completion\" "
                       "feature whose steps they label")
    fields.append("step_labels")
  if "completion" in fields and "label" not in fields:
    raise ValueError(
        f"TFDS dataset {name!r} has a \"completion\" feature but no bool \"label\";"
        " an unpaired completion needs its label (a teacher completion is"
        " \"demonstration\")"
    )
  return tuple(fields)


@dataclasses.dataclass(frozen=True)
class _Fields:
  """A random-access source reduced to `fields`, so other features never reach a batch."""

  source: Any
  fields: Tuple[str, ...]

  def __len__(self) -> int:
    return len(self.source)

  def _pick(self, record: Mapping[str, Any]) -> dict[str, Any]:
    return {k: record[k] for k in self.fields}

  def __getitem__(self, index):
    return self._pick(self.source[index])

  def __getitems__(self, indices):
    return [self._pick(r) for r in self.source.__getitems__(indices)]


def tfds_split(cfg: DataConfig, split: str) -> str:
  """The TFDS split (spec) read as the pipeline's `split` ("train" or "test")."""
  return {"train": cfg.tfds_train_split, "test": cfg.tfds_test_split}.get(split, split)


def _load_tfds_split(cfg: DataConfig, split: str) -> _Fields:
  builder = prepare(cfg)
  spec = tfds_split(cfg, split)
  field = {"train": " (data.tfds_train_split)", "test": " (data.tfds_test_split)"}
  try:
    source = builder.as_data_source(split=spec, file_format="array_record")
  except (ValueError, KeyError) as e:
    message, available = _first_line(e), str(sorted(builder.info.splits.keys()))
    raise ValueError(
        f"split {spec!r}{field.get(split, '')} of TFDS dataset {cfg.tfds_name!r}: {message}"
        + ("" if available in message else f" (available: {available})")
    ) from None
  return _Fields(source, _tfds_fields(builder.info.features, cfg.tfds_name))


def prepare(cfg: DataConfig):
  """Builds the dataset for `cfg` unless already built; returns the builder.

  For data.task="tfds" nothing is built: the user's dataset must already be prepared. For
  data.task="hf" the local copy is opened (files converted once into an Arrow cache under
  data_dir) and the columns of the train and test splits checked; returns {split: Dataset}.
  """
  cfg.validate()
  if cfg.task == "tfds":
    return _tfds_builder(cfg)
  if cfg.task == "hf":
    return _prepare_hf(cfg)
  builder = _make_builder(cfg)
  # try_download_gcs=False: never look for a prebuilt copy on the network.
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(try_download_gcs=False)
  )
  return builder


def _hf_split_key(split: str) -> str | None:
  return {"train": "hf_train_split", "test": "hf_test_split"}.get(split)


def hf_split(cfg: DataConfig, split: str) -> str:
  """The Hugging Face split (spec) read as the pipeline's `split` ("train" or "test")."""
  key = _hf_split_key(split)
  return getattr(cfg, key) if key else split


def _prepare_hf(cfg: DataConfig) -> dict[str, Any]:
  """The opened dataset; the configured splits' columns and chat needs checked."""
  splits = hf_datasets.load(cfg)
  names = dict.fromkeys(hf_datasets.parse_split(hf_split(cfg, s), _hf_split_key(s)).name
                        for s in ("train", "test"))
  readers = [hf_datasets.reader(cfg, name, splits[name]) for name in names if name in splits]
  hf_datasets.check_chat_template(cfg, readers)
  return splits


def load_split(cfg: DataConfig, split: str):
  """Random-access source of `split`; records are dicts of bytes (TFDS) or checked records
  (Hugging Face)."""
  if cfg.task == "tfds":
    return _load_tfds_split(cfg, split)
  if cfg.task == "hf":
    return hf_datasets.records(cfg, prepare(cfg), hf_split(cfg, split), _hf_split_key(split))
  builder = prepare(cfg)
  available = sorted(builder.info.splits.keys())
  if split not in available:
    raise ValueError(
        f"split {split!r} does not exist for data.task={cfg.task!r};"
        f" available: {available}"
        + (" (set data.test_path for a test split)" if cfg.task == "jsonl" else "")
    )
  return builder.as_data_source(split=split)


def _text(example: Mapping[str, Any], key: str) -> str:
  value = example.get(key, "")
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _encode_text(text: str, field: str, tokenizer: CharTokenizer) -> list[int]:
  try:
    return tokenizer.encode(text)
  except ValueError as e:
    raise ValueError(f"\"{field}\": {e}") from None


def _right_padded(
    text: str, field: str, tokenizer: CharTokenizer, length: int
) -> tuple[np.ndarray, np.ndarray]:
  """`[t1..tm, EOS, PAD..]`, or all PAD if `text` is empty (no reference)."""
  tokens = np.full(length, tokenizer.pad_id, np.int32)
  if not text:
    return tokens, np.zeros(length, bool)
  ids = _encode_text(text, field, tokenizer) + [tokenizer.eos_id]
  if len(ids) > length:
    raise ValueError(
        f"\"{field}\" needs {len(ids)} tokens (incl. EOS) but"
        f" data.max_answer_len={length}: {builders.shorten(text)}"
    )
  tokens[: len(ids)] = ids
  return tokens, np.arange(length) < len(ids)


def prompt_ids(prompt: str, tokenizer, cfg: DataConfig,
               messages: Sequence[Mapping[str, Any]] | None = None) -> list[int]:
  """The token ids the policy is conditioned on.

  Raw prompts get the tokenizer's BOS, if it has one (Qwen's has none). Chat prompts are one
  user turn (after an optional system turn) rendered by the tokenizer's chat template, which
  writes any BOS itself, up to the assistant's turn. A record's own conversation, `messages`
  (a Hugging Face dataset's conversational prompt), is rendered the same way whatever the
  prompt format, with `data.system_prompt` first if set and the conversation has no system
  turn.
  """
  if messages:
    if not getattr(tokenizer, "chat_templates", None):
      raise ValueError("the prompt is a conversation, which needs a tokenizer with a chat "
                       "template (data.tokenizer_dir)")
    messages = list(messages)
    if cfg.system_prompt and messages[0].get("role") != "system":
      messages.insert(0, {"role": "system", "content": cfg.system_prompt})
    return tokenizer.encode_chat(messages, add_generation_prompt=True)
  if cfg.prompt_format == "chat":
    messages = [{"role": "user", "content": prompt}]
    if cfg.system_prompt:
      messages.insert(0, {"role": "system", "content": cfg.system_prompt})
    return tokenizer.encode_chat(messages, add_generation_prompt=True)
  bos = [] if tokenizer.bos_id is None else [tokenizer.bos_id]
  return bos + _encode_text(prompt, "prompt", tokenizer)


def encode_example(
    example: Mapping[str, Any], tokenizer: CharTokenizer, cfg: DataConfig
) -> dict[str, np.ndarray]:
  """Tokenizes one record into fixed-length arrays (see module docstring).

  A record with "messages" (a conversational prompt) is conditioned on their rendering;
  its "prompt" then only names it in errors.
  """
  prompt = _text(example, "prompt")
  messages = example.get("messages")
  if not prompt and not messages:
    raise ValueError("prompt is empty")
  length = cfg.max_prompt_len
  ids = prompt_ids(prompt, tokenizer, cfg, messages)
  if len(ids) > length:
    raise ValueError(
        f"\"prompt\" needs {len(ids)} tokens (with BOS or chat template) but"
        f" data.max_prompt_len={length}: {builders.shorten(prompt)}"
    )
  prompt_tokens = np.full(length, tokenizer.pad_id, np.int32)
  prompt_tokens[length - len(ids) :] = ids
  answer_tokens, answer_mask = _right_padded(
      _text(example, "answer"), "answer", tokenizer, cfg.max_answer_len
  )
  completions = {}
  for key, field in (("demo", "demonstration"), ("chosen", "chosen"),
                     ("rejected", "rejected"), ("completion", "completion")):
    tokens, mask = _right_padded(
        _text(example, field), field, tokenizer, cfg.max_answer_len
    )
    completions[f"{key}_tokens"], completions[f"{key}_mask"] = tokens, mask
  # No completion, no label: an unlabelled row reads 0 with an all-false mask.
  labelled = completions["completion_mask"].any() and bool(example.get("label", False))
  step_labels = _step_labels(example, completions, tokenizer, cfg)
  return {
      "prompt_tokens": prompt_tokens,
      "prompt_mask": np.arange(length) >= length - len(ids),
      "answer_tokens": answer_tokens,
      "answer_mask": answer_mask,
      **completions,
      "labels": np.asarray(labelled, np.float32),
      "step_labels": step_labels,
  }


def _step_labels(example: Mapping[str, Any], completions: Mapping[str, np.ndarray],
                 tokenizer, cfg: DataConfig) -> np.ndarray:
  """[max_answer_len]: each step's label at the token that ends it, -1 elsewhere."""
  out = np.full(cfg.max_answer_len, -1.0, np.float32)
  labels = np.asarray(example.get("step_labels", ()), np.float32).reshape(-1)
  if not labels.size:
    return out
  if not np.all((labels >= 0) & (labels <= 1)):  # NaN fails too
    raise ValueError(f"\"step_labels\" must lie in [0, 1], got {labels.tolist()}")
  if not completions["completion_mask"].any():
    raise ValueError("\"step_labels\" label the steps of \"completion\", which is empty")
  delimiter = tokenizer.encode(cfg.step_delimiter)
  if len(delimiter) != 1:
    raise ValueError(f"data.step_delimiter={cfg.step_delimiter!r} is {len(delimiter)} tokens "
                     "in this tokenizer; a step must end at one token")
  tokens, mask = completions["completion_tokens"], completions["completion_mask"]
  ends = mask & (tokens == delimiter[0])
  ends[mask.sum() - 1] = True  # the EOS ends the last step
  if ends.sum() != labels.size:
    raise ValueError(
        f"\"step_labels\" has {labels.size} labels but \"completion\" has {ends.sum()} "
        f"steps (each ends at data.step_delimiter={cfg.step_delimiter!r} or at the end)")
  out[ends] = labels
  return out


def _read_all(source, chunk_size: int = 4096):
  """Yields every record in order, reading in chunks where supported."""
  # Batched reads of an array_record source are ~5x faster than one by one.
  get_many = getattr(source, "__getitems__", None)
  for start in range(0, len(source), chunk_size):
    indices = range(start, min(start + chunk_size, len(source)))
    yield from get_many(list(indices)) if get_many else (source[i] for i in indices)


def _where(
    example: Mapping[str, Any], cfg: DataConfig, split_name: str, index: int | None
) -> str:
  """`path:line` of a JSONL record (its builder stores the line); a Hugging Face record's
  path, split and row; else split and index."""
  if cfg.task == "hf" and "row" in example:
    name = hf_datasets.parse_split(hf_split(cfg, split_name), "hf_path split").name
    return hf_datasets.where(cfg.hf_path, name, int(example["row"]))
  path = {"train": cfg.train_path, "test": cfg.test_path}.get(split_name, "")
  line = int(example.get("line", 0))
  if cfg.task == "jsonl" and path and line:
    return f"{path}:{line}"
  where = f"{split_name} split" + ("" if index is None else f", record {index}")
  if cfg.task == "tfds":  # the index counts within the TFDS split spec
    where += f" ({cfg.tfds_name} split {tfds_split(cfg, split_name)!r})"
  return where


def _check_pairs(example: Mapping[str, Any]) -> None:
  """The JSONL records' rules for completions (`builders.read_jsonl`), for TFDS records.

  (A TFDS record always has its dataset's `label`, so "completion needs a label" is checked
  on the features instead.)
  """
  text = {k: _text(example, k) for k in ("chosen", "rejected", "completion")}
  for key, value in text.items():
    if value and not value.strip():
      raise ValueError(f"\"{key}\" is only whitespace: {builders.shorten(value)}")
  if bool(text["chosen"]) != bool(text["rejected"]):
    given = "chosen" if text["chosen"] else "rejected"
    raise ValueError(
        "a preference pair needs both \"chosen\" and \"rejected\" (an empty string"
        f" counts as none), got only \"{given}\""
    )
  if text["chosen"] and text["chosen"] == text["rejected"]:
    raise ValueError(
        "\"chosen\" and \"rejected\" are the same (no preference):"
        f" {builders.shorten(text['chosen'])}"
    )


def _encode_located(
    example: Mapping[str, Any],
    tokenizer: CharTokenizer,
    cfg: DataConfig,
    split_name: str,
    index: int | None = None,
) -> dict[str, np.ndarray]:
  """`encode_example`, its errors prefixed with where the record came from."""
  try:
    if cfg.task == "tfds":  # JSONL records were checked when their dataset was built
      _check_pairs(example)
    return encode_example(example, tokenizer, cfg)
  except ValueError as e:
    raise ValueError(f"{_where(example, cfg, split_name, index)}: {e}") from None


def _encode_all(
    source, tokenizer: CharTokenizer, cfg: DataConfig, split_name: str
) -> Iterator[dict[str, np.ndarray]]:
  """Encodes every record in order; errors name file:line (JSONL) or split and index."""
  if len(source) == 0:
    raise ValueError(f"{split_name} split is empty")
  for index, example in enumerate(_read_all(source)):
    yield _encode_located(example, tokenizer, cfg, split_name, index)


def validate_split(
    source, tokenizer: CharTokenizer, cfg: DataConfig, split_name: str
) -> None:
  """Raises ValueError naming the record (file:line, or split and index) if any is bad."""
  for _ in _encode_all(source, tokenizer, cfg, split_name):
    pass


def train_iterator(
    cfg: DataConfig,
    tokenizer: CharTokenizer,
    batch_size: int,
    *,
    shard_index: int = 0,
    shard_count: int = 1,
    seed: int | None = None,
) -> grain.DatasetIterator:
  """Endless shuffled batches of train records; this shard's rows of each global batch.

  `batch_size` is the global batch. Every shard (host) shuffles the same way and reads only
  its own `batch_size // shard_count` rows of each global batch, in order: concatenating
  the shards' batches gives exactly the batch a single host would read. So a run trains
  identically on any number of hosts, and `get_state()` (a small JSON-able dict, the same
  on every shard) restores on any number of hosts. Each epoch is reshuffled.
  """
  if not 0 <= shard_index < shard_count:
    raise ValueError(
        f"need 0 <= shard_index < shard_count, got {shard_index=},"
        f" {shard_count=}"
    )
  if batch_size < 1:
    raise ValueError(f"batch_size must be positive, got {batch_size}")
  if batch_size % shard_count:
    raise ValueError(
        f"the global batch of {batch_size} does not split evenly over"
        f" {shard_count} hosts"
    )
  seed = cfg.seed if seed is None else seed
  encode = functools.partial(
      _encode_located, tokenizer=tokenizer, cfg=cfg, split_name="train"
  )
  ds = (
      grain.MapDataset.source(load_split(cfg, "train"))
      .shuffle(seed=seed)
      .repeat(None)
      # Raw records stay a list: their step_labels differ in length until encoded.
      .batch(batch_size // shard_count, drop_remainder=True, batch_fn=list)
  )
  # Batch k of shard i is rows [i*b, (i+1)*b) of global batch k; encoding happens after
  # the slice, so a host touches only its own records.
  ds = ds[shard_index::shard_count].map(lambda rows: _stack([encode(r) for r in rows]))
  return iter(ds.to_iter_dataset())


def _stack(rows: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
  return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def eval_batches(
    cfg: DataConfig, tokenizer: CharTokenizer, split: str, batch_size: int
) -> list[dict[str, np.ndarray]]:
  """The whole split, in order, once, as `batch_size` batches.

  The last batch is filled by repeating its final row, so shapes stay fixed;
  `valid` marks the real rows.
  """
  if batch_size < 1:
    raise ValueError(f"batch_size must be positive, got {batch_size}")
  rows = list(_encode_all(load_split(cfg, split), tokenizer, cfg, split))
  batches = []
  for start in range(0, len(rows), batch_size):
    chunk = rows[start : start + batch_size]
    num_valid = len(chunk)
    chunk = chunk + [chunk[-1]] * (batch_size - num_valid)
    batch = {k: np.stack([row[k] for row in chunk]) for k in chunk[0]}
    batch["valid"] = np.arange(batch_size) < num_valid
    batches.append(batch)
  return batches
