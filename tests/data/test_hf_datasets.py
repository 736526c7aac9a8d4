"""data.task="hf": local copies of Hugging Face datasets, read through the pipeline.

Every dataset is built here with `datasets` itself and written as the formats a researcher has
(save_to_disk, parquet, arrow, JSON lines); nothing is downloaded. The reference is the JSONL
task on the same rows: each source must give exactly its batches.
"""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

datasets = pytest.importorskip("datasets")

from rlalign.data import hf_datasets, pipeline  # noqa: E402
from rlalign.data.hf_tokenizer import HFTokenizer  # noqa: E402
from rlalign.data.pipeline import DataConfig  # noqa: E402
from rlalign.data.tokenizer import ASCII_ALPHABET, CharTokenizer  # noqa: E402
from tests.data.test_hf_tokenizer import LLAMA_CONFIG, _special, byte_level, write_dir  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOKENIZER = CharTokenizer(ASCII_ALPHABET)
LENGTHS = dict(max_prompt_len=16, max_answer_len=6)

# Every field, each row with some of them (a missing value is null in the dataset).
TRAIN = [
    {"prompt": "What is 2+2?", "answer": "4", "demonstration": "4", "chosen": "4",
     "rejected": "5"},
    {"prompt": "Say hi.", "answer": "hi", "completion": "hi", "label": True},
    {"prompt": "Name a color:", "completion": "dog", "label": False, "step_labels": [0.0]},
    {"prompt": "1+1=", "answer": "2", "chosen": "2", "rejected": "11"},
    {"prompt": "Count: 1", "completion": "2\n3", "step_labels": [1.0, 0.0]},
    {"prompt": "3+3=", "demonstration": "6"},
    {"prompt": "Yes?", "completion": "yes", "label": True, "step_labels": [1.0]},
]
TEST = [{"prompt": "5+5=", "answer": "10"},
        {"prompt": "Pick one:", "chosen": "a", "rejected": "b"},
        {"prompt": "Go on:", "demonstration": "ok", "completion": "no", "label": False}]
FEATURES = {**{k: datasets.Value("string") for k in ("prompt", "answer", "demonstration",
                                                      "chosen", "rejected", "completion")},
            "label": datasets.Value("bool"),
            "step_labels": datasets.List(datasets.Value("float32"))}


def _dataset(rows, features=FEATURES):
  features = datasets.Features(features)
  return datasets.Dataset.from_dict({k: [r.get(k) for r in rows] for k in features},
                                    features=features)


def _write_jsonl(path, rows):
  with open(path, "w") as f:
    for row in rows:
      f.write(json.dumps(row) + "\n")
  return str(path)


def _arrow_file(ds, path, scratch):
  """`ds` as one Arrow stream file, the format save_to_disk and the Arrow cache write."""
  ds.save_to_disk(str(scratch))
  shutil.copy(os.path.join(scratch, "data-00000-of-00001.arrow"), path)
  shutil.rmtree(scratch)


def _sources(root):
  """{kind: (hf_path, hf_train_split, hf_test_split)}: TRAIN and TEST in each format."""
  train, test, both = _dataset(TRAIN), _dataset(TEST), _dataset(TRAIN + TEST)
  first, rest = f"train[:{len(TRAIN)}]", f"train[{len(TRAIN)}:]"  # one split holding both
  sources = {}

  def directory(name):
    path = root / name
    path.mkdir()
    return path

  datasets.DatasetDict({"train": train, "test": test}).save_to_disk(str(root / "dict"))
  sources["save_to_disk DatasetDict"] = (root / "dict", "train", "test")
  both.save_to_disk(str(root / "single"))
  sources["save_to_disk Dataset"] = (root / "single", first, rest)
  both.to_parquet(str(root / "both.parquet"))
  sources["parquet file"] = (root / "both.parquet", first, rest)
  path = directory("parquet")
  train.to_parquet(str(path / "train.parquet"))
  test.to_parquet(str(path / "test.parquet"))
  sources["parquet directory"] = (path, "train", "test")
  path = directory("sharded") / "data"  # the hub's layout: shards, split in the file name
  path.mkdir()
  for i, (start, stop) in enumerate([(0, 4), (4, len(TRAIN))]):
    train.select(range(start, stop)).to_parquet(str(path / f"train-0000{i}-of-00002.parquet"))
  test.to_parquet(str(path / "test-00000-of-00001.parquet"))
  sources["sharded parquet directory"] = (path.parent, "train", "test")
  path = directory("arrow")
  _arrow_file(train, path / "train.arrow", root / "scratch")
  _arrow_file(test, path / "test.arrow", root / "scratch")
  sources["arrow directory"] = (path, "train", "test")
  _arrow_file(both, root / "both.arrow", root / "scratch")
  sources["arrow file"] = (root / "both.arrow", first, rest)
  path = directory("jsonl")
  train.to_json(str(path / "train.jsonl"))
  test.to_json(str(path / "test.jsonl"))
  sources["jsonl directory"] = (path, "train", "test")
  both.to_json(str(root / "both.json"))
  sources["json file"] = (root / "both.json", first, rest)
  return {k: (str(p), a, b) for k, (p, a, b) in sources.items()}


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
  return _sources(tmp_path_factory.mktemp("sources"))


@pytest.fixture(scope="module")
def jsonl_cfg(tmp_path_factory):
  """The JSONL task on the same rows: the reference."""
  root = tmp_path_factory.mktemp("jsonl")
  return DataConfig(task="jsonl", data_dir=str(root / "tfds"), **LENGTHS,
                    train_path=_write_jsonl(root / "train.jsonl", TRAIN),
                    test_path=_write_jsonl(root / "test.jsonl", TEST))


@pytest.fixture(scope="module")
def reference(jsonl_cfg):
  return _batches(jsonl_cfg)


def _batches(cfg):
  return {"train": pipeline.eval_batches(cfg, TOKENIZER, "train", batch_size=4),
          "test": pipeline.eval_batches(cfg, TOKENIZER, "test", batch_size=4)}


def _iterator(cfg, **kwargs):
  """A train iterator, closed when the test ends: grain prefetches hundreds of batches ahead
  in threads, which would otherwise go on taking the CPU from the tests after it."""
  it = pipeline.train_iterator(cfg, TOKENIZER, **{"batch_size": 2, "seed": 3, **kwargs})
  _OPEN.append(it)
  return it


_OPEN = []


@pytest.fixture(autouse=True)
def _close_iterators():
  yield
  while _OPEN:
    _OPEN.pop().close()


def _assert_same_batches(got, want):
  assert got.keys() == want.keys()
  for name in want:
    got_list, want_list = (x if isinstance(x, list) else [x] for x in (got[name], want[name]))
    assert len(got_list) == len(want_list), name
    for g, w in zip(got_list, want_list):
      assert g.keys() == w.keys(), name
      for key in w:
        np.testing.assert_array_equal(g[key], w[key], err_msg=f"{name}: {key}")


def _cfg(data_dir, hf_path, train="train", test="test", **overrides):
  return DataConfig(task="hf", data_dir=str(data_dir), hf_path=str(hf_path),
                    hf_train_split=train, hf_test_split=test, **{**LENGTHS, **overrides})


def _one_line_error(fn, *args, **kwargs) -> str:
  with pytest.raises(ValueError) as e:
    fn(*args, **kwargs)
  assert "\n" not in str(e.value), str(e.value)
  return str(e.value)


# --- every source reads like the JSONL task -----------------------------------------------


@pytest.mark.parametrize("kind", [
    "save_to_disk DatasetDict", "save_to_disk Dataset", "parquet file", "parquet directory",
    "sharded parquet directory", "arrow directory", "arrow file", "jsonl directory",
    "json file"])
def test_every_source_gives_the_jsonl_tasks_batches(kind, sources, reference, tmp_path):
  path, train, test = sources[kind]
  cfg = _cfg(tmp_path / "data", path, train, test)
  assert len(pipeline.load_split(cfg, "train")) == len(TRAIN)
  _assert_same_batches(_batches(cfg), reference)
  # The runtime's check before compiling: every record encodes.
  for split in ("train", "test"):
    pipeline.validate_split(pipeline.load_split(cfg, split), TOKENIZER, cfg, split)


def test_records_carry_their_row(sources, tmp_path):
  path, _, test = sources["save_to_disk Dataset"]
  records = pipeline.load_split(_cfg(tmp_path, path, test=test), "test")
  assert [r["row"] for r in records.__getitems__([0, 2])] == [len(TRAIN), len(TRAIN) + 2]
  assert records[1]["prompt"] == TEST[1]["prompt"]
  with pytest.raises(IndexError):
    records[len(TEST)]


def test_train_iterator_shuffles_like_jsonl_and_resumes(sources, jsonl_cfg, tmp_path):
  cfg = _cfg(tmp_path, *sources["parquet directory"])
  it = _iterator(cfg)
  batches = [next(it) for _ in range(3)]  # into the second epoch of 7 rows
  state = it.get_state()
  batches += [next(it) for _ in range(3)]
  it.close()
  reference = _iterator(jsonl_cfg)
  _assert_same_batches({"b": batches}, {"b": [next(reference) for _ in range(6)]})
  reference.close()
  resumed = _iterator(cfg)
  resumed.set_state(json.loads(json.dumps(state)))  # the state is JSON, as checkpoints keep it
  _assert_same_batches({"b": [next(resumed) for _ in range(3)]}, {"b": batches[3:]})


# --- split specs --------------------------------------------------------------------------


@pytest.mark.parametrize("spec", ["train", "train[:]", "train[:95%]", "train[100:]",
                                  "train[-7:]", "train[10%:-30%]", "train[:33%]", "train[-10%:]",
                                  "train[3:5]", "train[50%:50%]", "train[-100%:25%]"])
def test_split_slices_select_the_rows_hf_selects(spec):
  for num_rows in (1, 7, 50, 333):
    (instruction,) = datasets.ReadInstruction.from_spec(spec).to_absolute({"train": num_rows})
    want = range(num_rows)[instruction.from_:instruction.to]
    assert hf_datasets.parse_split(spec, "hf_train_split").rows(num_rows) == want, num_rows


def test_a_slice_reads_those_rows(sources, tmp_path):
  path, _, _ = sources["save_to_disk DatasetDict"]
  cfg = _cfg(tmp_path, path, train="train[2:-2]", test="train[-40%:]")
  (batch,) = pipeline.eval_batches(cfg, TOKENIZER, "train", batch_size=len(TRAIN))
  prompts = [TOKENIZER.decode(r) for r, ok in zip(batch["prompt_tokens"], batch["valid"]) if ok]
  assert prompts == [r["prompt"] for r in TRAIN[2:-2]]
  assert [r["row"] for r in pipeline.load_split(cfg, "test")] == [4, 5, 6]  # round(2.8) = 3


# --- column mapping -------------------------------------------------------------------------


def test_columns_map_fields_and_an_empty_name_leaves_a_column_unread(tmp_path, reference):
  names = {"prompt": "question", "answer": "solution", "chosen": "good", "rejected": "bad",
           "completion": "response", "label": "is_good", "step_labels": "steps"}
  rows = [{names.get(k, k): v for k, v in r.items()} for r in TRAIN + TEST]
  ds = _dataset(rows, {names.get(k, k): v for k, v in FEATURES.items()})
  ds = ds.add_column("label", list(range(len(ds))))  # same-named, but not the label
  ds.save_to_disk(str(tmp_path / "ds"))
  columns = tuple(names.items())
  split = dict(train=f"train[:{len(TRAIN)}]", test=f"train[{len(TRAIN)}:]")
  # Unmapped, the same-named int column is read, and fails the rules by its row.
  cfg = _cfg(tmp_path / "data", tmp_path / "ds", **split,
             columns=tuple((k, v) for k, v in columns if k != "label"))
  message = _one_line_error(pipeline.eval_batches, cfg, TOKENIZER, "train", 4)
  assert message == (f"data.hf_path={tmp_path / 'ds'} split 'train' row 0: \"label\" must be "
                     "true or false, got int")
  cfg = _cfg(tmp_path / "data", tmp_path / "ds", **split, columns=columns)
  _assert_same_batches(_batches(cfg), reference)
  cfg = _cfg(tmp_path / "data", tmp_path / "ds", **split,
             columns=tuple({**names, "answer": ""}.items()))
  assert not any(b["answer_mask"].any() for b in pipeline.eval_batches(cfg, TOKENIZER,
                                                                        "train", 4))


def test_columns_from_a_config_file(tmp_path):
  from rlalign import config as config_lib  # imports jax: only this test pays for it
  from tests.configs import load_config
  _dataset(TRAIN).save_to_disk(str(tmp_path / "ds"))
  config = load_config("grpo_hf_dataset", f"{tmp_path / 'ds'},prompt=question,label=")
  config.data.data_dir = str(tmp_path / "data")
  cfg = config_lib.from_config_dict(config).data
  assert (cfg.task, cfg.hf_path) == ("hf", str(tmp_path / "ds"))
  assert dict(cfg.columns) == {"prompt": "question", "label": ""}
  config.data.columns = {"promt": "question"}
  with pytest.raises(ValueError, match=r"data\.columns\.promt: unknown field; the fields are"):
    config_lib.from_config_dict(config)
  with pytest.raises(ValueError, match="is not FIELD=COLUMN"):
    load_config("grpo_hf_dataset", f"{tmp_path / 'ds'},prompt")


# --- errors -------------------------------------------------------------------------------


@pytest.mark.parametrize("overrides, message", [
    ({"hf_path": ""}, "data.hf_path is required when data.task='hf'"),
    ({"hf_train_split": "train[:95"}, "data.hf_train_split='train[:95' is not a split: expected"),
    ({"hf_test_split": "train[1:2:3]"}, "data.hf_test_split='train[1:2:3]' is not a split"),
    ({"hf_test_split": "train[:150%]"}, "data.hf_test_split='train[:150%]' is not a split"),
    # Hugging Face would read it as train[10%:-3%].
    ({"hf_test_split": "train[10%:-3]"}, "data.hf_test_split='train[10%:-3]' is not a split"),
    ({"hf_test_split": "train+test"}, "data.hf_test_split='train+test' is not a split"),
    ({"columns": (("promt", "q"),)}, "data.columns.promt: unknown field; the fields are "
                                     "['prompt', 'answer',"),
    ({"columns": (("prompt", "q"), ("prompt", "r"))}, "data.columns.prompt is given twice"),
])
def test_validate_names_the_bad_hf_field(overrides, message):
  cfg = DataConfig(**{"task": "hf", "data_dir": "/tmp/unused", "hf_path": "/data/ds",
                      **overrides})
  assert message in _one_line_error(cfg.validate)


@pytest.mark.parametrize("hf_path", ["HuggingFaceH4/ultrafeedback_binarized", "/no/such/dir",
                                     "hf://datasets/openai/gsm8k"])
def test_a_hub_name_or_missing_path_fails_saying_how_to_copy_it(hf_path, tmp_path):
  cfg = _cfg(tmp_path / "data", hf_path)
  for check in (lambda: pipeline.prepare(cfg), lambda: pipeline.load_split(cfg, "train")):
    assert _one_line_error(check) == (
        f"data.hf_path={hf_path!r} is not a local file or directory, and rlalign never "
        f"downloads datasets: on a machine with network run datasets.load_dataset({hf_path!r})"
        ".save_to_disk(DIR), copy DIR here and set data.hf_path=DIR")
  assert not (tmp_path / "data").exists()


def test_missing_and_empty_splits_name_the_key(sources, tmp_path):
  path, _, _ = sources["parquet file"]  # one split, "train"
  cfg = _cfg(tmp_path, path)
  assert _one_line_error(pipeline.load_split, cfg, "test") == (
      f"data.hf_test_split='test': data.hf_path={path} has no split 'test'; its splits are "
      "['train'] (set data.hf_test_split to one of them, or to a slice of one such as "
      "'train[-10%:]')")
  cfg = _cfg(tmp_path, path, train="train[100:]")
  assert _one_line_error(pipeline.load_split, cfg, "train") == (
      f"data.hf_train_split='train[100:]' selects no rows of split 'train' of data.hf_path="
      f"{path} ({len(TRAIN) + len(TEST)} rows)")


def test_a_mapped_column_the_dataset_lacks_is_named_before_reading_rows(sources, tmp_path):
  path, _, _ = sources["save_to_disk DatasetDict"]
  cfg = _cfg(tmp_path, path, columns=(("answer", "solution"),))
  columns = list(FEATURES)
  for check in (lambda: pipeline.prepare(cfg), lambda: pipeline.load_split(cfg, "train")):
    assert _one_line_error(check) == (
        f"data.columns.answer='solution': data.hf_path={path} split 'train' has no such "
        f"column; its columns are {columns}")
  cfg = _cfg(tmp_path, path, columns=(("prompt", ""),))
  assert _one_line_error(pipeline.prepare, cfg).startswith(
      f"data.hf_path={path} split 'train' has no prompt: no \"prompt\" column (its columns are "
      f"{columns}); set data.columns.prompt to the column that holds it")


@pytest.mark.parametrize("row, message", [
    ({"prompt": "p", "chosen": "same", "rejected": "same"},
     "\"chosen\" and \"rejected\" are the same (no preference): 'same'"),
    ({"prompt": "p", "chosen": "c"}, "a preference pair needs both \"chosen\" and \"rejected\""),
    ({"prompt": "p", "completion": "  "}, "\"completion\" is only whitespace: '  '"),
    ({"prompt": "p", "completion": "c"}, "an unpaired example needs both \"completion\" and "
                                         "\"label\""),
    ({"prompt": "p", "completion": "c", "step_labels": [0.5, 2.0]},
     "\"step_labels\"[1] must be a number in [0, 1]"),
    ({"prompt": ""}, "\"prompt\" must be a non-empty string"),
    ({}, "missing required key \"prompt\""),
    ({"prompt": "p", "answer": "x" * 9}, "\"answer\" needs 10 tokens (incl. EOS) but "
                                         "data.max_answer_len=6"),
])
def test_a_bad_row_is_named_by_path_split_and_row(row, message, tmp_path):
  rows = [{"prompt": f"ok {i}", "answer": str(i)} for i in range(20)]
  rows[17] = row
  path = tmp_path / "ds"
  datasets.DatasetDict({"train": _dataset(rows), "test": _dataset(rows[:2])}).save_to_disk(
      str(path))
  cfg = _cfg(tmp_path / "data", path, train="train[10:]")
  where = f"data.hf_path={path} split 'train' row 17: "  # the row in the split, not the slice
  train = pipeline.load_split(cfg, "train")
  for check in (lambda: pipeline.validate_split(train, TOKENIZER, cfg, "train"),
                lambda: pipeline.eval_batches(cfg, TOKENIZER, "train", batch_size=4)):
    assert _one_line_error(check).startswith(where + message)
  if "answer" in row or not row:  # one error of each kind in training, where rows go unnamed
    with pytest.raises(ValueError, match="^" + where.replace("[", r"\[")):
      next(_iterator(cfg, batch_size=10))


def test_a_column_of_the_wrong_type_fails_at_its_first_row(tmp_path):
  _dataset([{"prompt": 1}, {"prompt": 2}], {"prompt": datasets.Value("int64")}).save_to_disk(
      str(tmp_path / "ds"))
  cfg = _cfg(tmp_path / "data", tmp_path / "ds", test="train")
  assert _one_line_error(pipeline.eval_batches, cfg, TOKENIZER, "train", 2) == (
      f"data.hf_path={tmp_path / 'ds'} split 'train' row 0: \"prompt\" must be a string, got int")


def test_unreadable_files_are_named(tmp_path):
  (tmp_path / "train.csv").write_text("prompt\nhi\n")
  message = _one_line_error(pipeline.prepare, _cfg(tmp_path / "data", tmp_path / "train.csv"))
  assert message.startswith(f"data.hf_path={tmp_path / 'train.csv'}: .csv is not a format")
  message = _one_line_error(pipeline.prepare, _cfg(tmp_path / "data", tmp_path))
  assert message.startswith(f"data.hf_path={tmp_path}: no ['.arrow', '.json', '.jsonl', "
                            "'.parquet'] files and no save_to_disk output")
  (tmp_path / "bad.parquet").write_bytes(b"not parquet at all")
  message = _one_line_error(pipeline.prepare, _cfg(tmp_path / "data", tmp_path / "bad.parquet"))
  assert message.startswith(f"data.hf_path={tmp_path / 'bad.parquet'}: datasets cannot read it:")
  mixed = tmp_path / "mixed"
  mixed.mkdir()
  _dataset(TRAIN).to_parquet(str(mixed / "train.parquet"))
  _dataset(TEST).to_json(str(mixed / "test.jsonl"))
  assert _one_line_error(pipeline.prepare, _cfg(tmp_path / "data", mixed)) == (
      f"data.hf_path={mixed} mixes ['json', 'parquet'] files; keep one format")


def test_without_the_datasets_package_says_how_to_install_it(sources, tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, "datasets", None)  # what `import datasets` finds uninstalled
  cfg = _cfg(tmp_path, sources["parquet directory"][0])
  assert _one_line_error(pipeline.prepare, cfg) == (
      "data.task='hf' reads Hugging Face datasets with the `datasets` package, which is not "
      "installed: pip install \"rlalign[datasets]\"")


# --- chat data ------------------------------------------------------------------------------

# Llama 3's turn layout, as the chat SFT test uses it.
from tests.rl.test_sft_chat import BOS, EOT, HEADERS, TEMPLATE  # noqa: E402

CHAT_LENGTHS = dict(max_prompt_len=96, max_answer_len=24)


def _turn(role, content):
  return {"role": role, "content": content}


CONVERSATIONS = [
    [_turn("system", "Keep your answers short."), _turn("user", "What is 2 + 3?"),
     _turn("assistant", "The answer is 5.")],
    [_turn("user", "Hello, how are you today?"), _turn("assistant", "I am fine."),
     _turn("user", "Thank you!")],  # ends with the user: a prompt with no demonstration
]


def _tokenizer_dir(path, template=TEMPLATE):
  backend = byte_level(BOS)
  backend.add_special_tokens(_special(HEADERS))
  config = {**LLAMA_CONFIG, **({"chat_template": template} if template else {})}
  return write_dir(path, backend, config)


@pytest.fixture(scope="module")
def chat_tokenizer(tmp_path_factory):
  directory = _tokenizer_dir(tmp_path_factory.mktemp("chat_tok"))
  return str(directory), HFTokenizer.from_dir(directory)


def _chat_cfg(tmp_path, hf_path, tokenizer_dir, **overrides):
  return _cfg(tmp_path / "data", hf_path, test="train",
              **{**CHAT_LENGTHS, "tokenizer_dir": tokenizer_dir, **overrides})


def _prompt_ids(batch, i):
  return batch["prompt_tokens"][i][batch["prompt_mask"][i]].tolist()


def _reply_ids(batch, key, i):
  return batch[f"{key}_tokens"][i][batch[f"{key}_mask"][i]].tolist()


def test_messages_are_the_templated_prompt_and_the_final_reply(chat_tokenizer, tmp_path):
  directory, tok = chat_tokenizer
  datasets.Dataset.from_dict({"messages": CONVERSATIONS}).save_to_disk(str(tmp_path / "ds"))
  cfg = _chat_cfg(tmp_path, tmp_path / "ds", directory)
  (batch,) = pipeline.eval_batches(cfg, tok, "train", batch_size=2)
  first, second = CONVERSATIONS
  assert _prompt_ids(batch, 0) == tok.encode_chat(first[:-1], add_generation_prompt=True)
  header = lambda role: f"{HEADERS[0]}{role}{HEADERS[1]}\n\n"
  assert tok.apply_chat_template(first[:-1]) == (
      BOS + header("system") + "Keep your answers short." + EOT + header("user")
      + "What is 2 + 3?" + EOT + header("assistant"))
  assert _reply_ids(batch, "demo", 0) == tok.encode("The answer is 5.") + [tok.eos_id]
  assert _prompt_ids(batch, 1) == tok.encode_chat(second, add_generation_prompt=True)
  assert not batch["demo_mask"][1].any()
  # data.system_prompt goes first where a conversation has no system turn of its own.
  cfg = _chat_cfg(tmp_path, tmp_path / "ds", directory, system_prompt="Be kind.")
  (batch,) = pipeline.eval_batches(cfg, tok, "train", batch_size=2)
  assert _prompt_ids(batch, 0) == tok.encode_chat(first[:-1], add_generation_prompt=True)
  assert _prompt_ids(batch, 1) == tok.encode_chat([_turn("system", "Be kind."), *second],
                                                  add_generation_prompt=True)


@pytest.mark.slow  # transformers' import alone takes seconds
def test_messages_render_as_transformers_renders_them(chat_tokenizer, tmp_path):
  transformers = pytest.importorskip("transformers")
  directory, tok = chat_tokenizer
  datasets.Dataset.from_dict({"messages": CONVERSATIONS}).save_to_disk(str(tmp_path / "ds"))
  (batch,) = pipeline.eval_batches(_chat_cfg(tmp_path, tmp_path / "ds", directory), tok,
                                   "train", batch_size=2)
  theirs = transformers.AutoTokenizer.from_pretrained(directory)
  for i, prompt in enumerate([CONVERSATIONS[0][:-1], CONVERSATIONS[1]]):
    ids = theirs.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True,
                                     return_dict=False)
    assert _prompt_ids(batch, i) == list(ids)


PROMPT = [_turn("user", "What is 2 + 3?")]
GOOD, BAD = _turn("assistant", "The answer is 5."), _turn("assistant", "Six.")


@pytest.mark.parametrize("columns", [
    {"prompt": [PROMPT, PROMPT], "chosen": [[GOOD], [BAD]], "rejected": [[BAD], [GOOD]]},
    # TRL's implicit prompt: the turns before the replies.
    {"chosen": [PROMPT + [GOOD], PROMPT + [BAD]], "rejected": [PROMPT + [BAD], PROMPT + [GOOD]]},
], ids=["explicit prompt", "implicit prompt"])
def test_conversational_preference_pairs(columns, chat_tokenizer, tmp_path):
  directory, tok = chat_tokenizer
  datasets.Dataset.from_dict(columns).to_parquet(str(tmp_path / "prefs.parquet"))
  cfg = _chat_cfg(tmp_path, tmp_path / "prefs.parquet", directory)
  (batch,) = pipeline.eval_batches(cfg, tok, "train", batch_size=2)
  for i, (chosen, rejected) in enumerate([(GOOD, BAD), (BAD, GOOD)]):
    assert _prompt_ids(batch, i) == tok.encode_chat(PROMPT, add_generation_prompt=True)
    assert _reply_ids(batch, "chosen", i) == tok.encode(chosen["content"]) + [tok.eos_id]
    assert _reply_ids(batch, "rejected", i) == tok.encode(rejected["content"]) + [tok.eos_id]
  assert pipeline.load_split(cfg, "train")[0]["messages"] == PROMPT


def test_conversational_unpaired_completions_and_a_text_prompt(chat_tokenizer, tmp_path):
  directory, tok = chat_tokenizer
  datasets.Dataset.from_dict({"prompt": [PROMPT, PROMPT], "completion": [[GOOD], [BAD]],
                              "label": [True, False]}).save_to_disk(str(tmp_path / "kto"))
  (batch,) = pipeline.eval_batches(_chat_cfg(tmp_path, tmp_path / "kto", directory), tok,
                                   "train", batch_size=2)
  assert _prompt_ids(batch, 1) == tok.encode_chat(PROMPT, add_generation_prompt=True)
  assert _reply_ids(batch, "completion", 1) == tok.encode("Six.") + [tok.eos_id]
  np.testing.assert_array_equal(batch["labels"], [1, 0])
  # A text prompt with conversational replies needs no template: the prompt stays raw text.
  datasets.Dataset.from_dict({"prompt": ["2+3=", "1+1="], "chosen": [[GOOD], [GOOD]],
                              "rejected": [[BAD], [BAD]]}).save_to_disk(str(tmp_path / "raw"))
  cfg = _cfg(tmp_path / "data", tmp_path / "raw", test="train", **CHAT_LENGTHS)
  (batch,) = pipeline.eval_batches(cfg, TOKENIZER, "train", batch_size=2)
  assert [TOKENIZER.decode(r) for r in batch["chosen_tokens"]] == ["The answer is 5."] * 2
  assert TOKENIZER.decode(batch["prompt_tokens"][0]) == "2+3="


@pytest.mark.parametrize("columns, message", [
    ({"chosen": [PROMPT + [GOOD]], "rejected": [[_turn("user", "Other?"), BAD]]},
     "\"chosen\" and \"rejected\" differ before their final turn"),
    ({"prompt": [PROMPT], "chosen": [PROMPT], "rejected": [[BAD]]},
     "\"chosen\" must end with the assistant's reply, got a 'user' turn"),
    ({"prompt": ["2+3="], "chosen": [PROMPT + [GOOD]], "rejected": [PROMPT + [BAD]]},
     "\"chosen\" holds 2 turns, but the prompt is given apart"),
    ({"chosen": [[GOOD]], "rejected": [[BAD]]},
     "\"chosen\" has no turn before the assistant's reply, and there is no prompt column"),
    ({"messages": [[GOOD]]}, "\"messages\" has no turn before the assistant's reply"),
    ({"prompt": [[{"role": "user", "content": None}]]},
     "\"prompt\"[0] must be a message with string \"role\" and \"content\""),
])
def test_bad_conversations_are_named_by_row(columns, message, chat_tokenizer, tmp_path):
  datasets.Dataset.from_dict(columns).save_to_disk(str(tmp_path / "ds"))
  cfg = _chat_cfg(tmp_path, tmp_path / "ds", chat_tokenizer[0])
  got = _one_line_error(pipeline.eval_batches, cfg, chat_tokenizer[1], "train", 1)
  assert got.startswith(f"data.hf_path={tmp_path / 'ds'} split 'train' row 0: {message}"), got


def test_chat_data_needs_a_tokenizer_with_a_template_before_compiling(tmp_path):
  datasets.Dataset.from_dict({"messages": CONVERSATIONS}).save_to_disk(str(tmp_path / "ds"))
  what = (f"data.hf_path={tmp_path / 'ds'} split 'train' holds conversations (columns "
          "['messages']), which are rendered by a chat template")
  cfg = _chat_cfg(tmp_path, tmp_path / "ds", "")
  for check in (lambda: pipeline.prepare(cfg), lambda: pipeline.load_split(cfg, "train")):
    assert _one_line_error(check) == f"{what}: set data.tokenizer_dir to a tokenizer that has one"
  datasets.Dataset.from_dict({"chosen": [PROMPT + [GOOD]], "rejected": [PROMPT + [BAD]]}
                             ).save_to_disk(str(tmp_path / "implicit"))
  assert _one_line_error(pipeline.prepare, _chat_cfg(tmp_path, tmp_path / "implicit", "")) == (
      f"data.hf_path={tmp_path / 'implicit'} split 'train' holds conversations (columns "
      "['chosen', 'rejected']), which are rendered by a chat template: set data.tokenizer_dir "
      "to a tokenizer that has one")
  plain = _tokenizer_dir(tmp_path / "plain", template=None)
  cfg = _chat_cfg(tmp_path, tmp_path / "ds", str(plain))
  assert _one_line_error(pipeline.prepare, cfg) == (
      f"{what}, but data.tokenizer_dir={plain} has no chat template")
  # Records read without prepare (a character tokenizer) still refuse to encode.
  records = hf_datasets.records(cfg, hf_datasets.load(cfg), "train")
  assert _one_line_error(pipeline.encode_example, records[0], TOKENIZER, cfg) == (
      "the prompt is a conversation, which needs a tokenizer with a chat template "
      "(data.tokenizer_dir)")


def test_messages_and_a_prompt_column_must_not_both_give_the_prompt(chat_tokenizer, tmp_path):
  # As in HuggingFaceH4/ultrachat_200k: the first user turn again as "prompt".
  datasets.Dataset.from_dict({"prompt": ["What is 2 + 3?", "Hello"],
                              "messages": CONVERSATIONS}).save_to_disk(str(tmp_path / "ds"))
  cfg = _chat_cfg(tmp_path, tmp_path / "ds", chat_tokenizer[0])
  assert _one_line_error(pipeline.prepare, cfg) == (
      f"data.columns: \"messages\" (column 'messages') and \"prompt\" (column 'prompt') of "
      f"data.hf_path={tmp_path / 'ds'} would both give the prompt; set data.columns.prompt='' "
      "or data.columns.messages=''")
  cfg = _chat_cfg(tmp_path, tmp_path / "ds", chat_tokenizer[0], columns=(("prompt", ""),))
  assert len(pipeline.eval_batches(cfg, chat_tokenizer[1], "train", batch_size=2)) == 1


# --- nothing leaves the machine or data_dir -----------------------------------------------

_OFFLINE_CHECK = r"""
import json, sys
events = []
def audit(event, args):
  if event in ("socket.connect", "socket.getaddrinfo", "socket.gethostbyname", "socket.sendto"):
    events.append([event, repr(args)[:200]])
    raise OSError("no network in this test")
sys.addaudithook(audit)
from rlalign.data import pipeline
from rlalign.data.tokenizer import ASCII_ALPHABET, CharTokenizer
sources, data_dir = json.loads(sys.argv[1]), sys.argv[2]
tok = CharTokenizer(ASCII_ALPHABET)
for path, train, test in sources:
  cfg = pipeline.DataConfig(task="hf", data_dir=data_dir, hf_path=path, hf_train_split=train,
                            hf_test_split=test, max_prompt_len=16, max_answer_len=6)
  for split in ("train", "test"):
    pipeline.eval_batches(cfg, tok, split, batch_size=4)
try:
  pipeline.prepare(pipeline.DataConfig(task="hf", data_dir=data_dir, hf_path="openai/gsm8k"))
except ValueError as e:
  print("refused:", e, file=sys.stderr)
print(json.dumps(events))
"""


def _tree(root):
  return {os.path.join(d, f): os.stat(os.path.join(d, f)).st_mtime_ns
          for d, _, files in os.walk(root) for f in files}


def test_no_network_and_nothing_written_outside_data_dir(tmp_path):
  """In a fresh process whose environment does not say offline, with every cache and home
  directory pointed at empty ones: no socket is opened, and files appear only in data_dir."""
  sources = _sources(_mkdir(tmp_path / "sources"))
  sources = [sources[k] for k in ("save_to_disk DatasetDict", "parquet directory", "arrow file",
                                  "jsonl directory")]
  before = _tree(tmp_path)
  home = {name: _mkdir(tmp_path / name) for name in ("home", "hf_home", "xdg_cache")}
  env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE"))}
  env.update(HOME=str(home["home"]), HF_HOME=str(home["hf_home"]),
             XDG_CACHE_HOME=str(home["xdg_cache"]), HF_UPDATE_DOWNLOAD_COUNTS="1",
             PYTHONPATH=REPO)
  data_dir = tmp_path / "data"
  proc = subprocess.run([sys.executable, "-c", _OFFLINE_CHECK, json.dumps(sources),
                         str(data_dir)], capture_output=True, text=True, env=env, cwd=REPO,
                        timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert json.loads(proc.stdout.strip().splitlines()[-1]) == []
  assert "refused: data.hf_path='openai/gsm8k' is not a local file or directory" in proc.stderr
  for directory in home.values():
    assert list(directory.iterdir()) == [], directory
  after = _tree(tmp_path)
  assert {p: t for p, t in after.items() if p in before} == before  # sources untouched
  new = sorted(p for p in after if p not in before)
  assert new and all(p.startswith(str(data_dir / hf_datasets.CACHE_DIR) + os.sep) for p in new)


def _mkdir(path):
  path.mkdir()
  return path


# --- end to end -----------------------------------------------------------------------------

TINY_RUN = ("--config.phases.warm_start.steps=2", "--config.phases.warm_start.batch_size=8",
            "--config.phases.rl.steps=2", "--config.phases.rl.batch_size=16",
            "--config.phases.rl.group_size=4", "--config.phases.rl.minibatches=1",
            "--config.train.eval_batch_size=8", "--config.train.log_every=1",
            "--config.train.eval_every=2", "--config.train.checkpoint_every=2")


@pytest.mark.slow
def test_main_trains_on_a_hf_dataset_exactly_as_on_the_same_jsonl(tmp_path, cli):
  from rlalign.data import addition
  rows = {split: list(addition.generate_problems(split, num, 3, 0.7, 0))
          for split, num in (("train", 64), ("test", 16))}
  paths = {split: _write_jsonl(tmp_path / f"{split}.jsonl", r) for split, r in rows.items()}
  datasets.DatasetDict({split: datasets.Dataset.from_list(r) for split, r in rows.items()}
                       ).save_to_disk(str(tmp_path / "ds"))
  configs = {"jsonl": os.path.join(REPO, "configs", "grpo_jsonl.py") + ":"
                      + f"{paths['train']},{paths['test']}",
             "hf": os.path.join(REPO, "configs", "grpo_hf_dataset.py") + f":{tmp_path / 'ds'}"}
  trained = {}
  for name, config in configs.items():
    workdir = str(tmp_path / f"run_{name}")
    cli.run_main(workdir, *TINY_RUN, config=config)
    trained[name] = cli.final_params(workdir, config=config)
    summary = json.load(open(os.path.join(workdir, "summary.json")))
    assert summary["status"] == "completed"
  assert trained["hf"][0] == trained["jsonl"][0] == 2
  import jax
  jax.tree.map(np.testing.assert_array_equal, trained["hf"][1], trained["jsonl"][1])
