"""data.task="hf": a Hugging Face `datasets` dataset, read from a local copy only.

`data.hf_path` names the copy; nothing is ever downloaded, and a hub name fails at once:
  a directory written by `Dataset.save_to_disk` / `DatasetDict.save_to_disk`
                     read with `datasets.load_from_disk`; a single Dataset is the split "train";
  a .parquet, .arrow or .jsonl / .json file
                     the split "train";
  a directory of such files
                     its splits inferred from the file names as Hugging Face infers them
                     (train.parquet / test.parquet, data/train-00000-of-00002.parquet, ...).
Files are read with `datasets.load_dataset("parquet" | "arrow" | "json", data_files=...)`,
which converts them once into an Arrow cache under `data.data_dir/hf_datasets` (a changed file
gets a new one); nothing is written anywhere else, ~/.cache included.

`data.hf_train_split` / `data.hf_test_split` name the splits the pipeline reads as its
"train" and "test": a split name, optionally sliced as in Hugging Face ("train[:95%]",
"train[100:]", "test[-10%:]"; percentages round to the closest row).

`data.columns` maps a record field to the dataset's column ({"prompt": "question"}); a field
left out reads the column of its own name if there is one, and one mapped to "" is not read.
Rows are checked by the rules JSONL lines obey (`builders.check_record`), a null value
counting as absent, and errors name `data.hf_path`, the split and the row.

Chat data is TRL's conversational format: a value that is a list of {"role", "content"}
messages. A "messages" conversation is the prompt up to its final assistant turn, and that
turn's content is the "demonstration". A conversational "prompt" is the prompt; conversational
"chosen", "rejected", "completion" and "demonstration" values give their final assistant
turn's content, and with no prompt column their shared earlier turns are the prompt (TRL's
implicit prompt). Such prompts are rendered by the tokenizer's chat template
(`data.tokenizer_dir`) with the generation prompt; records carry them as "messages".

`datasets` is an optional dependency (`pip install "rlalign[datasets]"`), imported only here
and only for this task.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import re
from typing import Any, Mapping, Optional, Sequence, Tuple

from rlalign.data import builders

FIELDS = ("prompt", "answer", "demonstration", "chosen", "rejected", "completion", "label",
          "step_labels", "messages")
# Fields whose value may be a conversation that ends with the assistant's reply.
_REPLY_FIELDS = ("demonstration", "chosen", "rejected", "completion")
_FORMATS = {".parquet": "parquet", ".arrow": "arrow", ".jsonl": "json", ".json": "json"}
# What `save_to_disk` writes: a DatasetDict's index, or a single Dataset's state.
_SAVED_MARKERS = ("dataset_dict.json", "state.json")
CACHE_DIR = "hf_datasets"  # under data.data_dir
_SPLIT = re.compile(r"([\w.-]+)(?:\[(-?\d+%?)?:(-?\d+%?)?\])?")
_SPLIT_EXAMPLES = "'train', 'train[:95%]', 'train[100:]' or 'test[-10%:]'"


# ------------------------------------------------------------------ config


@dataclasses.dataclass(frozen=True)
class SplitSpec:
  """A split name and an optional slice of its rows (Python slice bounds, or percentages)."""

  name: str
  start: Optional[str] = None  # "100", "-5", "95%" or None
  stop: Optional[str] = None

  def rows(self, num_rows: int) -> range:
    """The rows of a split of `num_rows` rows that the slice selects, as Hugging Face does."""
    def bound(text):
      if text is None:
        return None
      if text.endswith("%"):  # `datasets.ReadInstruction`'s "closest" rounding
        return int(round(int(text[:-1]) * num_rows / 100.0))
      return int(text)
    return range(num_rows)[bound(self.start):bound(self.stop)]


def parse_split(spec: str, key: str) -> SplitSpec:
  """`spec` ("train", "train[:95%]", ...) of the config key `key`; raises naming `key`."""
  match = _SPLIT.fullmatch(spec)
  bounds = [b for b in match.group(2, 3) if b] if match else []
  units = {b.endswith("%") for b in bounds}
  if not match or len(units) > 1 or any(b.endswith("%") and abs(int(b[:-1])) > 100
                                        for b in bounds):
    # Mixed units are refused: Hugging Face would read "train[10%:-3]" as "train[10%:-3%]".
    raise ValueError(f"data.{key}={spec!r} is not a split: expected a split name, optionally "
                     f"sliced as NAME[start:stop] in row counts or in percentages up to 100% "
                     f"(e.g. {_SPLIT_EXAMPLES})")
  return SplitSpec(*match.group(1, 2, 3))


def validate_config(cfg) -> None:
  """The hf fields of a `DataConfig`, checked without reading anything."""
  if not cfg.hf_path:
    raise ValueError("data.hf_path is required when data.task='hf' (a directory written by "
                     "save_to_disk, or local parquet / arrow / JSONL files)")
  for key in ("hf_train_split", "hf_test_split"):
    parse_split(getattr(cfg, key), key)
  seen = set()
  for entry in cfg.columns:
    if not (isinstance(entry, tuple) and len(entry) == 2
            and all(isinstance(x, str) for x in entry)):
      raise ValueError(f"data.columns must map field names to column names, got {entry!r}")
    field, _ = entry
    if field not in FIELDS:
      raise ValueError(f"data.columns.{field}: unknown field; the fields are {list(FIELDS)}")
    if field in seen:
      raise ValueError(f"data.columns.{field} is given twice")
    seen.add(field)


def where(path: str, split: str, row: int) -> str:
  """How an error names a row."""
  return f"data.hf_path={path} split {split!r} row {row}"


# ------------------------------------------------------------------ loading


def import_datasets():
  """The `datasets` package, or a one-line error saying how to install it."""
  try:
    import datasets  # pylint: disable=import-outside-toplevel
  except ModuleNotFoundError as e:
    if e.name != "datasets":
      raise
    raise ValueError("data.task='hf' reads Hugging Face datasets with the `datasets` package, "
                     "which is not installed: pip install \"rlalign[datasets]\"") from None
  return datasets


@contextlib.contextmanager
def _offline(datasets):
  """`datasets` with its offline switches on, whatever the environment said at its import.

  Even a load of local files through `load_dataset` would otherwise send a download-count
  request to the hub; these are the settings HF_HUB_OFFLINE and HF_UPDATE_DOWNLOAD_COUNTS set.
  """
  config = datasets.config
  names = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_UPDATE_DOWNLOAD_COUNTS")
  saved = {name: getattr(config, name) for name in names}
  config.HF_HUB_OFFLINE = config.HF_DATASETS_OFFLINE = True
  config.HF_UPDATE_DOWNLOAD_COUNTS = False
  try:
    yield
  finally:
    for name, value in saved.items():
      setattr(config, name, value)


def _first_line(e: BaseException) -> str:
  lines = str(e).strip().splitlines()
  return lines[0] if lines else type(e).__name__


def _not_local(path: str) -> ValueError:
  return ValueError(
      f"data.hf_path={path!r} is not a local file or directory, and rlalign never downloads "
      f"datasets: on a machine with network run datasets.load_dataset({path!r}).save_to_disk(DIR)"
      ", copy DIR here and set data.hf_path=DIR")


def _format_of(path: str) -> str:
  ext = os.path.splitext(path)[1].lower()
  if ext not in _FORMATS:
    raise ValueError(f"data.hf_path={path}: {ext or 'no extension'} is not a format read here; "
                     f"expected {sorted(_FORMATS)} files or a save_to_disk directory")
  return _FORMATS[ext]


def _directory_files(datasets, path: str, cache: str) -> tuple[str, dict[str, list[str]]]:
  """The format and {split: files} of a directory of data files, split as HF infers it
  (leaving out the Arrow cache, should data_dir lie inside it)."""
  data_files = datasets.data_files
  try:
    patterns = data_files.get_data_patterns(path)
    resolved = data_files.DataFilesDict.from_patterns(patterns, base_path=path)
  except FileNotFoundError:
    resolved = {}
  splits, formats = {}, set()
  for split, files in resolved.items():
    files = [f for f in files if os.path.splitext(f)[1].lower() in _FORMATS
             and not f.startswith(cache + os.sep)]
    if files:
      splits[split] = sorted(files)
      formats |= {_FORMATS[os.path.splitext(f)[1].lower()] for f in files}
  if not splits:
    raise ValueError(f"data.hf_path={path}: no {sorted(_FORMATS)} files and no save_to_disk "
                     f"output ({' or '.join(_SAVED_MARKERS)}) in this directory")
  if len(formats) > 1:
    raise ValueError(f"data.hf_path={path} mixes {sorted(formats)} files; keep one format")
  return formats.pop(), splits


def load(cfg) -> dict[str, Any]:
  """{split name: datasets.Dataset} of `cfg.hf_path`, read locally (see the module docstring)."""
  path = cfg.hf_path
  full = os.path.abspath(os.path.expanduser(path))
  if not os.path.exists(full):  # checked first: datasets would look a name up on the hub
    raise _not_local(path)
  datasets = import_datasets()
  with _offline(datasets):
    if os.path.isdir(full) and any(os.path.isfile(os.path.join(full, m)) for m in _SAVED_MARKERS):
      read = functools.partial(datasets.load_from_disk, full)
    else:
      cache = os.path.join(os.path.abspath(cfg.data_dir), CACHE_DIR)
      fmt, files = (_directory_files(datasets, full, cache) if os.path.isdir(full)
                    else (_format_of(path), {"train": [full]}))
      read = functools.partial(datasets.load_dataset, fmt, data_files=files, cache_dir=cache,
                               download_config=datasets.DownloadConfig(local_files_only=True))
    try:
      loaded = read()
    except (datasets.exceptions.DatasetsError, ValueError, OSError) as e:
      raise ValueError(f"data.hf_path={path}: datasets cannot read it: {_first_line(e)}"
                       ) from None
  if isinstance(loaded, datasets.Dataset):
    loaded = {"train": loaded}
  # A saved format (numpy, torch) would change the values' types: rows as plain Python.
  return {name: ds if ds.format["type"] is None else ds.with_format(None)
          for name, ds in loaded.items()}


# ------------------------------------------------------------------ columns


def _is_list(feature) -> bool:
  import datasets  # pylint: disable=import-outside-toplevel  (loaded by now)
  return isinstance(feature, (list, datasets.List, datasets.LargeList, datasets.Sequence))


@dataclasses.dataclass(frozen=True)
class Reader:
  """How the rows of one split become records: which column gives which field."""

  path: str                       # data.hf_path, as the config gives it (for errors)
  split: str                      # the dataset's split name
  columns: Tuple[Tuple[str, str], ...]  # (field, column), in FIELDS order
  rendered: Tuple[str, ...]       # the columns whose conversations become the prompt

  def record(self, row: Mapping[str, Any], index: int) -> dict[str, Any]:
    """The checked record of row `index` (see `builders.check_record`), with its "row" and,
    for a conversational prompt, its "messages"."""
    at = where(self.path, self.split, index)
    values = {field: row[column] for field, column in self.columns if row[column] is not None}
    values, turns = _from_conversations(at, values)
    example = builders.check_record(at, values)
    if turns is not None:
      example["messages"] = turns
    example["row"] = index
    return example


def reader(cfg, split: str, dataset) -> Reader:
  """The split's `Reader`: every mapped column checked against the dataset's columns."""
  features = dataset.features
  names = list(features)
  mapped = dict(cfg.columns)
  columns = []
  for field in FIELDS:
    column = mapped.get(field, field)
    if field in mapped and column and column not in features:
      raise ValueError(f"data.columns.{field}={column!r}: data.hf_path={cfg.hf_path} split "
                       f"{split!r} has no such column; its columns are {names}")
    if column and column in features:
      columns.append((field, column))
  given = dict(columns)

  def origin(field):
    return f"\"{field}\" (column {given[field]!r})"

  for other in ("prompt", "demonstration"):
    if "messages" in given and other in given:
      raise ValueError(
          f"data.columns: {origin('messages')} and {origin(other)} of data.hf_path="
          f"{cfg.hf_path} would both give the {other}; set data.columns.{other}='' or "
          "data.columns.messages=''")
  conversational = [f for f in _REPLY_FIELDS if f in given and _is_list(features[given[f]])]
  if not {"prompt", "messages"} & set(given) and not conversational:
    raise ValueError(
        f"data.hf_path={cfg.hf_path} split {split!r} has no prompt: no \"prompt\" column (its "
        f"columns are {names}); set data.columns.prompt to the column that holds it, or give "
        "a \"messages\" column")
  if "messages" in given:
    rendered = [given["messages"]]
  elif "prompt" in given:
    rendered = [given["prompt"]] if _is_list(features[given["prompt"]]) else []
  else:  # the implicit prompt
    rendered = [given[f] for f in conversational]
  return Reader(cfg.hf_path, split, tuple(columns), tuple(rendered))


def check_chat_template(cfg, readers: Sequence[Reader]) -> None:
  """Conversational prompts need a tokenizer with a chat template; raises before compiling."""
  from rlalign.data.tokenizer import tokenizer_for  # pylint: disable=import-outside-toplevel
  chat = [r for r in readers if r.rendered]
  if not chat:
    return
  what = (f"data.hf_path={cfg.hf_path} split {chat[0].split!r} holds conversations (columns "
          f"{list(chat[0].rendered)}), which are rendered by a chat template")
  if not cfg.tokenizer_dir:
    raise ValueError(f"{what}: set data.tokenizer_dir to a tokenizer that has one")
  if not getattr(tokenizer_for(cfg), "chat_templates", None):
    raise ValueError(f"{what}, but data.tokenizer_dir={cfg.tokenizer_dir} has no chat template")


# ------------------------------------------------------------------ conversations


def _conversation(at: str, key: str, value: Any) -> list:
  if not isinstance(value, list) or not value:
    raise ValueError(f"{at}: \"{key}\" must be a string or a non-empty list of "
                     f"{{\"role\", \"content\"}} messages, got {builders.shorten(repr(value))}")
  for i, message in enumerate(value):
    if not (isinstance(message, dict) and isinstance(message.get("role"), str)
            and isinstance(message.get("content"), str)):
      raise ValueError(f"{at}: \"{key}\"[{i}] must be a message with string \"role\" and "
                       f"\"content\", got {builders.shorten(repr(message))}")
  return value


def _from_conversations(at: str, values: dict[str, Any]) -> tuple[dict, Optional[list]]:
  """Conversational values as text fields plus the prompt's turns (None for a text prompt)."""
  turns = None
  if "messages" in values:
    turns = _conversation(at, "messages", values.pop("messages"))
    if turns[-1]["role"] == "assistant":
      values["demonstration"] = turns[-1]["content"]
      turns = turns[:-1]
    if not turns:
      raise ValueError(f"{at}: \"messages\" has no turn before the assistant's reply")
  if isinstance(values.get("prompt"), list):
    turns = _conversation(at, "prompt", values["prompt"])
  explicit = "prompt" in values or turns is not None
  before = {}
  for key in _REPLY_FIELDS:
    if not isinstance(values.get(key), list):
      continue
    conversation = _conversation(at, key, values[key])
    if conversation[-1]["role"] != "assistant":
      raise ValueError(f"{at}: \"{key}\" must end with the assistant's reply, got a "
                       f"{conversation[-1]['role']!r} turn")
    if explicit and len(conversation) > 1:
      raise ValueError(f"{at}: \"{key}\" holds {len(conversation)} turns, but the prompt is "
                       "given apart: it must be the assistant's reply alone (or map the prompt's "
                       "column to '' in data.columns to take the prompt from the turns "
                       "before the reply)")
    values[key] = conversation[-1]["content"]
    before[key] = conversation[:-1]
  if not explicit and before:  # TRL's implicit prompt: the turns before the replies
    (first, turns), *rest = before.items()
    for key, other in rest:
      if other != turns:
        raise ValueError(f"{at}: \"{first}\" and \"{key}\" differ before their final turn; "
                         "with no prompt column the turns before the reply are the prompt")
    if not turns:
      raise ValueError(f"{at}: \"{first}\" has no turn before the assistant's reply, and "
                       "there is no prompt column")
  if turns is not None:
    if not turns[-1]["content"]:
      raise ValueError(f"{at}: the prompt's last turn ({turns[-1]['role']!r}) is empty")
    values["prompt"] = turns[-1]["content"]  # what errors and displays show of the prompt
  return values, turns


# ------------------------------------------------------------------ records


@dataclasses.dataclass(frozen=True, eq=False)
class Records:
  """Rows `rows` of one split as checked records: a random-access source for grain."""

  dataset: Any  # a datasets.Dataset holding only the mapped columns
  rows: range
  reader: Reader

  def __len__(self) -> int:
    return len(self.rows)

  def __getitem__(self, index: int) -> dict[str, Any]:
    row = self.rows[index]
    return self.reader.record(self.dataset[row], row)

  def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
    rows = [self.rows[i] for i in indices]
    if not rows:
      return []
    return [self.reader.record(r, row) for r, row in zip(self.dataset.__getitems__(rows), rows)]


def records(cfg, splits: Mapping[str, Any], spec: str, key: Optional[str] = None) -> Records:
  """The records of the split spec `spec`, the value of the config key `key` (if any)."""
  given = f"data.{key}={spec!r}" if key else f"split {spec!r}"
  split = parse_split(spec, key or "hf_path split")
  if split.name not in splits:
    raise ValueError(
        f"{given}: data.hf_path={cfg.hf_path} has no split {split.name!r}; its splits are "
        f"{sorted(splits)} (set data.{key or 'hf_test_split'} to one of them, or to a slice of "
        "one such as 'train[-10%:]')")
  dataset = splits[split.name]
  rows = split.rows(len(dataset))
  if not rows:
    raise ValueError(f"{given} selects no rows of split {split.name!r} of data.hf_path="
                     f"{cfg.hf_path} ({len(dataset)} rows)")
  split_reader = reader(cfg, split.name, dataset)
  dataset = dataset.select_columns(sorted({c for _, c in split_reader.columns}))
  return Records(dataset, rows, split_reader)
