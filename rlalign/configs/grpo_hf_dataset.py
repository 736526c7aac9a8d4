"""GRPO on a local copy of a Hugging Face dataset: grpo_jsonl.py with data.task="hf".

The argument is the dataset (a save_to_disk directory, or parquet / arrow / JSONL files; never a
hub name), optionally followed by FIELD=COLUMN pairs for columns not named like rlalign's fields:

  python -m rlalign.main --config=configs/grpo_hf_dataset.py:/data/my_ds,prompt=question \
      --workdir=/tmp/rlalign_hf_dataset \
      --config.data.hf_train_split='train[:90%]' --config.data.hf_test_split='train[90%:]'

A dataset on the hub is copied once on a machine with network:
``datasets.load_dataset("OWNER/NAME").save_to_disk("/data/my_ds")``. ``answer`` feeds the
exact-match verifier and ``demonstration`` the supervised warm start; a "messages" column
(chat data) also needs ``--config.data.tokenizer_dir`` (a tokenizer with a chat template) and
a ``--config.model.vocab_size`` that holds it. Without one, text is tokenized per character over
printable ASCII and the model starts from scratch.

Expected: on the same rows this is grpo_jsonl.py's run step for step (the pipeline reads both to
the same batches in the same order; tests/data/test_hf_datasets.py checks the batches, and its
slow test the trained params).
"""
import ml_collections

from rlalign.configs import grpo_jsonl


def get_config(arg: str = ""):
  path, *pairs = arg.split(",") if arg else [""]
  if not path:
    raise ValueError("grpo_hf_dataset.py needs the dataset: --config=configs/grpo_hf_dataset.py:"
                     "/path/to/dataset[,FIELD=COLUMN...]")
  columns = {}
  for pair in pairs:
    field, sep, column = pair.partition("=")
    if not sep or not field:
      raise ValueError(f"grpo_hf_dataset.py: {pair!r} is not FIELD=COLUMN (e.g. "
                       "prompt=question; COLUMN '' leaves a same-named column unread)")
    columns[field] = column
  c = grpo_jsonl.get_config(path).to_dict()  # everything but where the rows come from
  lengths = {k: c["data"][k] for k in ("max_prompt_len", "max_answer_len")}
  c["data"] = dict(task="hf", data_dir="", hf_path=path, hf_train_split="train",
                   hf_test_split="test", columns=columns, tokenizer_dir="", system_prompt="",
                   **lengths)
  return ml_collections.ConfigDict(c)
